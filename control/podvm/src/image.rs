//! Container images for pod VMs.
//!
//! - [`build`]: a root file system (a directory) becomes a read-only ext4 image with
//!   `mkfs.ext4 -d` (no mount, no journal), cached under `VNFHOST_CACHE/images` by a key
//!   the caller derives from what identifies the image: containerd's snapshot chain (the
//!   overlay's lower directories), or the image's manifest digest. Each is built once per
//!   node; concurrent builders of one key wait for each other.
//! - [`import`]: `oci-archive:PATH` and `docker-archive:PATH` are unpacked (layers applied
//!   in order, whiteouts honoured) into the local image store,
//!   `/var/lib/vnfhost/images/NAME` (`VNFHOST_IMAGES`), where later runs find them by name.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

/// The node's cache of built images.
pub fn cache_dir() -> PathBuf {
    let base = std::env::var_os("VNFHOST_CACHE").unwrap_or_else(|| "/var/cache/vnfhost".into());
    Path::new(&base).join("images")
}

/// The local image store.
pub fn store_dir() -> PathBuf {
    std::env::var_os("VNFHOST_IMAGES")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/lib/vnfhost/images".into())
}

/// A cache key of `parts` (128 bits, hex).
pub fn key(parts: &[&str]) -> String {
    let mut out = String::new();
    for salt in [0u8, 1] {
        let mut h = DefaultHasher::new();
        salt.hash(&mut h);
        parts.hash(&mut h);
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out
}

/// Bytes and entries under `dir` (not following symlinks).
fn usage(dir: &Path) -> std::io::Result<(u64, u64)> {
    let (mut bytes, mut n) = (0u64, 0u64);
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let md = e.path().symlink_metadata()?;
            n += 1;
            bytes += md.len().div_ceil(4096) * 4096;
            if md.is_dir() {
                todo.push(e.path());
            }
        }
    }
    Ok((bytes, n))
}

/// The ext4 image of `rootfs`, built once per `key`.
pub fn build(rootfs: &Path, key: &str) -> Result<PathBuf, String> {
    let dir = cache_dir();
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let out = dir.join(format!("{key}.ext4"));
    // One builder per node at a time: the second finds the first's result.
    let lock = std::fs::File::create(dir.join(".lock")).map_err(|e| e.to_string())?;
    // SAFETY: flock on a file we hold open; released when it closes.
    unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) };
    if out.exists() {
        return Ok(out);
    }
    let (bytes, entries) =
        usage(rootfs).map_err(|e| format!("reading the root file system: {e}"))?;
    // Room for metadata: inode tables, directories, a margin for small files.
    let size = (bytes + bytes / 4 + (16 << 20)).div_ceil(1 << 20);
    let inodes = entries + entries / 4 + 1024;
    let tmp = dir.join(format!(".{key}.{}.tmp", std::process::id()));
    let o = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-b", "4096", "-O", "^has_journal,^resize_inode"])
        .args(["-N", &inodes.to_string(), "-L", "vnfroot", "-d"])
        .arg(rootfs)
        .arg(&tmp)
        .arg(format!("{size}M"))
        .output()
        .map_err(|e| format!("mkfs.ext4 (apt-get install e2fsprogs): {e}"))?;
    if !o.status.success() {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!(
            "mkfs.ext4 -d {}: {}",
            rootfs.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    std::fs::rename(&tmp, &out).map_err(|e| format!("{}: {e}", out.display()))?;
    Ok(out)
}

/// What an image says about how to run it (its OCI config's `config`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    /// Entrypoint.
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    /// Default arguments.
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    /// `KEY=VALUE`.
    #[serde(default)]
    pub env: Option<Vec<String>>,
    /// Working directory.
    #[serde(default)]
    pub working_dir: Option<String>,
    /// `uid[:gid]` (numeric).
    #[serde(default)]
    pub user: Option<String>,
}

/// An image in the local store.
#[derive(Clone, Debug)]
pub struct Stored {
    /// Its name.
    pub name: String,
    /// The unpacked root file system.
    pub rootfs: PathBuf,
    /// How to run it.
    pub config: RunConfig,
    /// The cache key of its ext4 image.
    pub key: String,
}

#[derive(Deserialize)]
struct ImageConfig {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
    #[serde(default)]
    config: RunConfig,
}

fn store_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Finds `reference` in the local store, or imports it first when it is
/// `oci-archive:PATH` or `docker-archive:PATH`.
pub fn resolve(reference: &str) -> Result<Stored, String> {
    if let Some(p) = reference.strip_prefix("oci-archive:") {
        return import(Path::new(p), Format::Oci);
    }
    if let Some(p) = reference.strip_prefix("docker-archive:") {
        return import(Path::new(p), Format::Docker);
    }
    let dir = store_dir().join(store_name(reference));
    load_stored(&dir).map_err(|_| {
        format!(
            "image {reference:?} is not in the local store ({}); give oci-archive:PATH or \
             docker-archive:PATH (no registry is used)",
            store_dir().display()
        )
    })
}

fn load_stored(dir: &Path) -> Result<Stored, String> {
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("image.json")).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    Ok(Stored {
        name: meta["name"].as_str().unwrap_or_default().to_string(),
        rootfs: dir.join("rootfs"),
        config: serde_json::from_value(meta["config"].clone()).unwrap_or_default(),
        key: meta["key"].as_str().unwrap_or_default().to_string(),
    })
}

/// An archive's format.
#[derive(Clone, Copy, Debug)]
pub enum Format {
    /// OCI image layout in a tar (`index.json`, `blobs/sha256/...`).
    Oci,
    /// `docker save` (`manifest.json`).
    Docker,
}

fn tar(args: &[&str], dir: &Path) -> Result<String, String> {
    let o = Command::new("tar")
        .args(args)
        .current_dir(dir)
        .output()
        .map_err(|e| format!("tar: {e}"))?;
    if !o.status.success() {
        return Err(format!(
            "tar {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

fn read_json(p: &Path) -> Result<serde_json::Value, String> {
    let b = std::fs::read(p).map_err(|e| {
        format!(
            "{}: {e}",
            p.file_name()
                .map(|f| f.to_string_lossy())
                .unwrap_or_default()
        )
    })?;
    serde_json::from_slice(&b).map_err(|e| format!("{}: {e}", p.display()))
}

/// A blob of an OCI layout by digest, refusing digests that are not plain hex.
fn blob(root: &Path, digest: &str) -> Result<PathBuf, String> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()))
        .ok_or(format!("digest {digest:?} is not sha256:HEX"))?;
    Ok(root.join("blobs/sha256").join(hex))
}

/// `root/rel` if no component of `rel`'s parent is a symlink or `..` (a hostile layer
/// could otherwise make a whiteout delete outside the root file system).
fn inside(root: &Path, rel: &str) -> Option<PathBuf> {
    let rel = rel.trim_start_matches("./").trim_start_matches('/');
    let mut p = root.to_path_buf();
    let parts: Vec<&str> = rel
        .split('/')
        .filter(|s| !s.is_empty() && *s != ".")
        .collect();
    for (i, part) in parts.iter().enumerate() {
        if *part == ".." {
            return None;
        }
        p.push(part);
        if i + 1 < parts.len() {
            match p.symlink_metadata() {
                Ok(md) if md.file_type().is_symlink() => return None,
                _ => {}
            }
        }
    }
    Some(p)
}

/// Applies one layer tar onto `rootfs`.
fn apply_layer(layer: &Path, rootfs: &Path) -> Result<(), String> {
    let list = tar(&["-tf", &layer.to_string_lossy()], rootfs)?;
    for entry in list.lines() {
        let (dir, base) = match entry.trim_end_matches('/').rsplit_once('/') {
            Some((d, b)) => (d, b),
            None => ("", entry.trim_end_matches('/')),
        };
        if base == ".wh..wh..opq" {
            if let Some(d) = inside(rootfs, dir) {
                for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                    let p = e.path();
                    let _ = if p.symlink_metadata().is_ok_and(|m| m.is_dir()) {
                        std::fs::remove_dir_all(&p)
                    } else {
                        std::fs::remove_file(&p)
                    };
                }
            }
        } else if let Some(gone) = base.strip_prefix(".wh.") {
            if let Some(p) = inside(rootfs, &format!("{dir}/{gone}")) {
                let _ = if p.symlink_metadata().is_ok_and(|m| m.is_dir()) {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
            }
        }
    }
    tar(
        &[
            "-xf",
            &layer.to_string_lossy(),
            "--same-owner",
            "--numeric-owner",
            "-p",
            "--exclude=.wh.*",
        ],
        rootfs,
    )
    .map(drop)
}

/// An archive's file name without its extension: the image's name when it names none.
fn file_stem(archive: &Path) -> String {
    archive
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Unpacks an archive into the store.
pub fn import(archive: &Path, format: Format) -> Result<Stored, String> {
    let archive = archive
        .canonicalize()
        .map_err(|e| format!("{}: {e}", archive.display()))?;
    let base = store_dir();
    std::fs::create_dir_all(&base).map_err(|e| format!("{}: {e}", base.display()))?;
    let work = base.join(format!(".import.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(work.join("x")).map_err(|e| e.to_string())?;
    let r = import_in(&archive, format, &work, &base);
    let _ = std::fs::remove_dir_all(&work);
    r
}

fn import_in(archive: &Path, format: Format, work: &Path, base: &Path) -> Result<Stored, String> {
    let x = work.join("x");
    tar(&["-xf", &archive.to_string_lossy()], &x)
        .map_err(|e| format!("{} is not a readable archive: {e}", archive.display()))?;
    let (name, config_path, layers, digest) = match format {
        Format::Oci => {
            let index =
                read_json(&x.join("index.json")).map_err(|e| format!("not an OCI archive: {e}"))?;
            let m = index["manifests"]
                .as_array()
                .and_then(|m| m.first())
                .ok_or("index.json lists no manifest")?;
            let ann = &m["annotations"];
            let name = ann["io.containerd.image.name"]
                .as_str()
                .or(ann["org.opencontainers.image.ref.name"].as_str())
                .map(String::from)
                .unwrap_or_else(|| file_stem(archive));
            let digest = m["digest"].as_str().unwrap_or_default().to_string();
            let manifest = read_json(&blob(&x, &digest)?)?;
            let config = blob(
                &x,
                manifest["config"]["digest"].as_str().unwrap_or_default(),
            )?;
            let mut layers = vec![];
            for l in manifest["layers"].as_array().into_iter().flatten() {
                layers.push(blob(&x, l["digest"].as_str().unwrap_or_default())?);
            }
            (name, config, layers, digest)
        }
        Format::Docker => {
            let m = read_json(&x.join("manifest.json"))
                .map_err(|e| format!("not a Docker archive: {e}"))?;
            let m = m
                .as_array()
                .and_then(|m| m.first())
                .ok_or("manifest.json lists no image")?;
            let name = m["RepoTags"][0]
                .as_str()
                .map(String::from)
                .unwrap_or_else(|| file_stem(archive));
            let rel = |v: &serde_json::Value| -> Result<PathBuf, String> {
                let s = v.as_str().ok_or("manifest.json: a path is missing")?;
                inside(&x, s)
                    .filter(|_| !s.starts_with('/'))
                    .ok_or(format!("manifest.json: path {s:?} leaves the archive"))
            };
            let config = rel(&m["Config"])?;
            let mut layers = vec![];
            for l in m["Layers"].as_array().into_iter().flatten() {
                layers.push(rel(l)?);
            }
            let digest = format!("docker:{}", m["Config"].as_str().unwrap_or_default());
            (name, config, layers, digest)
        }
    };
    let cfg: ImageConfig = serde_json::from_slice(
        &std::fs::read(&config_path).map_err(|e| format!("the image config: {e}"))?,
    )
    .map_err(|e| format!("the image config: {e}"))?;
    let arch = if cfg.architecture.is_empty() {
        "amd64"
    } else {
        &cfg.architecture
    };
    if arch != "amd64" || !(cfg.os.is_empty() || cfg.os == "linux") {
        return Err(format!(
            "image {name:?} is for {}/{arch}; this node runs linux/amd64 guests",
            if cfg.os.is_empty() { "linux" } else { &cfg.os }
        ));
    }
    if layers.is_empty() {
        return Err(format!("image {name:?} has no layers"));
    }
    let rootfs = work.join("rootfs");
    std::fs::create_dir_all(&rootfs).map_err(|e| e.to_string())?;
    for l in &layers {
        apply_layer(l, &rootfs).map_err(|e| format!("layer {}: {e}", l.display()))?;
    }
    let key = key(&[&digest, &name]);
    let meta = serde_json::json!({ "name": name, "config": cfg.config, "key": key });
    std::fs::write(work.join("image.json"), meta.to_string()).map_err(|e| e.to_string())?;
    let dest = base.join(store_name(&name));
    // Replace an older import of the same name whole.
    let old = base.join(format!(".old.{}", std::process::id()));
    let _ = std::fs::rename(&dest, &old);
    let _ = std::fs::remove_dir_all(work.join("x"));
    std::fs::rename(work, &dest).map_err(|e| format!("{}: {e}", dest.display()))?;
    let _ = std::fs::remove_dir_all(&old);
    load_stored(&dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stable_and_distinct() {
        assert_eq!(key(&["a", "b"]), key(&["a", "b"]));
        assert_ne!(key(&["a", "b"]), key(&["ab"]));
        assert_eq!(key(&["x"]).len(), 32);
    }

    #[test]
    fn whiteouts_cannot_leave_the_root() {
        let d = std::env::temp_dir().join(format!("podvm-inside-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("a")).unwrap();
        std::os::unix::fs::symlink("/etc", d.join("link")).unwrap();
        assert_eq!(inside(&d, "a/b"), Some(d.join("a/b")));
        assert_eq!(inside(&d, "./a/b"), Some(d.join("a/b")));
        assert_eq!(inside(&d, "a/../../x"), None);
        assert_eq!(inside(&d, "link/passwd"), None);
        // The last component may be a symlink: removing it removes the link only.
        assert_eq!(inside(&d, "link"), Some(d.join("link")));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
