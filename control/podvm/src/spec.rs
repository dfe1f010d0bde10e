//! What of an OCI runtime spec (`config.json`) a pod VM's guest honours.
//!
//! - `process`: args, env, cwd, user (uid, gid, additional gids), terminal;
//! - `hostname`;
//! - `mounts`: the guest gives each container its own `/proc`, `/sys`, `/dev`,
//!   `/dev/pts`, `/dev/shm` and `/dev/mqueue`, so those are not carried. Bind mounts of
//!   small host files and directories (`/etc/hosts`, `/etc/resolv.conf`,
//!   `/etc/hostname`, `/dev/termination-log`, a service account's token: at most
//!   [`COPY_LIMIT`] bytes each) are copied into the container when it is made: a copy,
//!   not a live view, and nothing written to them comes back. Anything else (a larger
//!   host directory, a tmpfs elsewhere) is refused with a clear error rather than
//!   silently left out.

use std::path::Path;

use agent::{File, Process};
use serde_json::Value;

/// The most a copied mount may hold.
pub const COPY_LIMIT: u64 = 1 << 20;

/// Mount destinations the guest provides itself.
const GUEST_PROVIDES: [&str; 7] = [
    "/proc",
    "/dev",
    "/dev/pts",
    "/dev/shm",
    "/dev/mqueue",
    "/sys",
    "/sys/fs/cgroup",
];

/// The process of a spec's `process` object.
pub fn process(p: &Value) -> Result<Process, String> {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let args = strings(&p["args"]);
    if args.is_empty() || args[0].is_empty() {
        return Err("the process has no args".into());
    }
    let user = &p["user"];
    let id = |v: &Value| v.as_u64().and_then(|n| u32::try_from(n).ok()).unwrap_or(0);
    let terminal = p["terminal"].as_bool().unwrap_or(false);
    let size = p["consoleSize"].as_object().map(|s| {
        (
            s.get("height").and_then(Value::as_u64).unwrap_or(24) as u16,
            s.get("width").and_then(Value::as_u64).unwrap_or(80) as u16,
        )
    });
    Ok(Process {
        args,
        env: strings(&p["env"]),
        cwd: p["cwd"].as_str().unwrap_or("/").to_string(),
        uid: id(&user["uid"]),
        gid: id(&user["gid"]),
        additional_gids: user["additionalGids"]
            .as_array()
            .map(|a| a.iter().map(id).collect())
            .unwrap_or_default(),
        terminal,
        stdin: false,
        size,
    })
}

/// The files of a spec's mounts that are carried into the guest by copy; an error names
/// the first mount that cannot be.
pub fn mounted_files(mounts: &Value) -> Result<Vec<File>, String> {
    let mut files = vec![];
    for m in mounts.as_array().into_iter().flatten() {
        let dest = m["destination"].as_str().unwrap_or_default();
        if GUEST_PROVIDES.contains(&dest.trim_end_matches('/')) {
            continue;
        }
        let ty = m["type"].as_str().unwrap_or_default();
        let bind = ty == "bind"
            || m["options"]
                .as_array()
                .is_some_and(|o| o.iter().any(|x| x == "bind" || x == "rbind"));
        if !bind {
            return Err(format!(
                "mount {dest:?} ({ty}): only bind mounts of small host files are carried \
                 into a pod VM; use a volume"
            ));
        }
        let src = Path::new(m["source"].as_str().unwrap_or_default());
        copy_in(src, dest, &mut files).map_err(|e| format!("mount {dest:?}: {e}"))?;
    }
    Ok(files)
}

fn copy_in(src: &Path, dest: &str, files: &mut Vec<File>) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mut total = 0u64;
    let mut todo = vec![(src.to_path_buf(), dest.to_string())];
    while let Some((s, d)) = todo.pop() {
        let md = std::fs::metadata(&s).map_err(|e| format!("{}: {e}", s.display()))?;
        if md.is_dir() {
            for e in std::fs::read_dir(&s).map_err(|e| e.to_string())?.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                todo.push((e.path(), format!("{}/{name}", d.trim_end_matches('/'))));
            }
            continue;
        }
        if !md.is_file() {
            return Err(format!(
                "{} is not a regular file or directory; not carried into a pod VM",
                s.display()
            ));
        }
        total += md.len();
        if total > COPY_LIMIT {
            return Err(format!(
                "host {} holds more than {} KiB, the most copied into a pod VM; use a volume",
                src.display(),
                COPY_LIMIT >> 10
            ));
        }
        let content = std::fs::read(&s).map_err(|e| format!("{}: {e}", s.display()))?;
        files.push(File {
            path: d,
            content,
            mode: md.permissions().mode() & 0o7777,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_spec_process_becomes_the_agents() {
        let p = process(&json!({
            "args": ["/bin/sh", "-c", "echo $HOME"], "env": ["A=1"], "cwd": "/w",
            "user": {"uid": 1000, "gid": 100, "additionalGids": [5, 6]}, "terminal": true
        }))
        .unwrap();
        assert_eq!(p.args[2], "echo $HOME");
        assert_eq!(
            (p.uid, p.gid, p.additional_gids.clone()),
            (1000, 100, vec![5, 6])
        );
        assert!(p.terminal);
        assert!(process(&json!({"args": []})).is_err());
    }

    #[test]
    fn small_binds_are_copied_and_the_rest_refused() {
        let d = std::env::temp_dir().join(format!("podvm-spec-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("dir")).unwrap();
        std::fs::write(d.join("hosts"), "127.0.0.1 localhost\n").unwrap();
        std::fs::write(d.join("dir/token"), "t").unwrap();
        let f = mounted_files(&json!([
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev/shm", "type": "bind", "source": "/nonexistent"},
            {"destination": "/etc/hosts", "type": "bind", "source": d.join("hosts"), "options": ["rbind"]},
            {"destination": "/var/run/secrets", "type": "bind", "source": d.join("dir")},
        ]))
        .unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].path, "/etc/hosts");
        assert_eq!(f[1].path, "/var/run/secrets/token");
        let e =
            mounted_files(&json!([{"destination": "/data", "type": "tmpfs", "source": "tmpfs"}]));
        assert!(e.unwrap_err().contains("/data"));
        std::fs::write(d.join("big"), vec![0u8; (COPY_LIMIT + 1) as usize]).unwrap();
        let e = mounted_files(
            &json!([{"destination": "/big", "type": "bind", "source": d.join("big")}]),
        );
        assert!(e.unwrap_err().contains("use a volume"));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
