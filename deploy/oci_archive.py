#!/usr/bin/env python3
"""Container image archives without a registry or a container engine.

Writes an OCI image layout (oci-layout, index.json, blobs/sha256/...) as one tar, the
"oci-archive" that `ctr images import` and `vnfhost run --image oci-archive:FILE` read,
or a `docker save` archive. The output is deterministic: layer entries in the order
they are added (a directory tree in sorted order), owned by root, with one fixed mtime
(SOURCE_DATE_EPOCH, else 0), and gzip streams without a name or a time; the same files
give the same digests.

The image is named with a full reference (docker.io/vnfhost/node:0.1.0), in index.json's
`io.containerd.image.name` annotation (containerd's import takes it as the image's name)
and `org.opencontainers.image.ref.name`.

As a program (deploy/build-node-image.sh), one layer per directory tree:

  oci_archive.py --out FILE --name REF --layer DIR [--layer DIR]... [--entrypoint ARG]...
                 [--cmd ARG]... [--env K=V]... [--label K=V]... [--workdir DIR]
                 [--arch ARCH] [--no-gzip]

As a module (control/tests/cri/cri_tool.py): `Layer`, `write`.
"""
import argparse
import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import sys
import tarfile
import tempfile

MTIME = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
CHUNK = 1 << 20


def _digest(f):
    """sha256 of a file object's content (from its start) and its size; rewinds it."""
    h = hashlib.sha256()
    f.seek(0)
    size = 0
    while True:
        b = f.read(CHUNK)
        if not b:
            break
        h.update(b)
        size += len(b)
    f.seek(0)
    return h.hexdigest(), size


class Layer:
    """One layer: an uncompressed tar in a temporary file, written as entries are added."""

    def __init__(self):
        self._file = tempfile.TemporaryFile()
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.PAX_FORMAT)
        self._closed = False

    def _info(self, path, kind, mode, size=0, link=""):
        info = tarfile.TarInfo(path.strip("/"))
        info.type = kind
        info.mode = mode
        info.size = size
        info.linkname = link
        info.mtime = MTIME
        return info

    def dir(self, path, mode=0o755):
        self._tar.addfile(self._info(path, tarfile.DIRTYPE, mode))

    def file(self, path, data, mode=0o644):
        self._tar.addfile(self._info(path, tarfile.REGTYPE, mode, len(data)), io.BytesIO(data))

    def symlink(self, path, target):
        self._tar.addfile(self._info(path, tarfile.SYMTYPE, 0o777, link=target))

    def copy(self, path, src, mode=None):
        """The regular file SRC (symlinks followed) at PATH, with SRC's mode unless MODE."""
        with open(src, "rb") as f:
            st = os.fstat(f.fileno())
            m = stat.S_IMODE(st.st_mode) if mode is None else mode
            self._tar.addfile(self._info(path, tarfile.REGTYPE, m, st.st_size), f)

    def tree(self, root):
        """Everything under the directory ROOT, at the same paths from the layer's root:
        directories, regular files (hard links as copies) and symlinks, with their modes."""
        for parent, dirs, files in os.walk(root):
            dirs.sort()
            rel = os.path.relpath(parent, root)
            for name in sorted(dirs + files):
                src = os.path.join(parent, name)
                path = name if rel == "." else os.path.join(rel, name)
                st = os.lstat(src)
                mode = stat.S_IMODE(st.st_mode)
                if stat.S_ISLNK(st.st_mode):
                    self.symlink(path, os.readlink(src))
                elif stat.S_ISDIR(st.st_mode):
                    self.dir(path, mode)
                elif stat.S_ISREG(st.st_mode):
                    self.copy(path, src, mode)
                else:
                    raise ValueError("%s: not a file, directory or symlink" % src)

    def close(self):
        """The finished tar (a file object at its start) and its sha256 (the diff_id)."""
        if not self._closed:
            self._tar.close()
            self._closed = True
        digest, _ = _digest(self._file)
        return self._file, digest


def _gzip(raw):
    out = tempfile.TemporaryFile()
    # No file name and a fixed time in the gzip header: the same layer, the same digest.
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0) as g:
        shutil.copyfileobj(raw, g, CHUNK)
    raw.seek(0)
    out.seek(0)
    return out


def _add(t, path, f, mode=0o644):
    """Adds bytes or a file object at PATH to the archive T."""
    if isinstance(f, bytes):
        f = io.BytesIO(f)
    f.seek(0, os.SEEK_END)
    info = tarfile.TarInfo(path)
    info.size = f.tell()
    info.mode = mode
    info.mtime = MTIME
    f.seek(0)
    t.addfile(info, f)


def write(out, name, layers, config, arch="amd64", fmt="oci", compress=True):
    """Writes the image NAME (a full reference) made of LAYERS (`Layer`s, lowest first)
    with CONFIG (the image config's "config" object: Entrypoint, Cmd, Env, ...) to the
    file OUT: an OCI archive (fmt "oci"; gzipped layers unless COMPRESS is false) or a
    `docker save` archive (fmt "docker"). OUT appears whole or not at all."""
    raws = [layer.close() for layer in layers]
    config = json.dumps({
        "architecture": arch,
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + d for _, d in raws]},
    }).encode()
    config_digest = hashlib.sha256(config).hexdigest()
    tmp = "%s.tmp.%d" % (out, os.getpid())
    try:
        with tarfile.open(tmp, mode="w") as t:
            if fmt == "docker":
                cfg_name = config_digest + ".json"
                _add(t, cfg_name, config)
                paths = []
                for i, (raw, _) in enumerate(raws):
                    paths.append("layer%d/layer.tar" % i)
                    _add(t, paths[-1], raw)
                _add(t, "manifest.json", json.dumps(
                    [{"Config": cfg_name, "RepoTags": [name], "Layers": paths}]).encode())
            elif fmt == "oci":
                blobs = []
                descs = []
                for raw, _ in raws:
                    blob = _gzip(raw) if compress else raw
                    digest, size = _digest(blob)
                    kind = "application/vnd.oci.image.layer.v1.tar" + ("+gzip" if compress else "")
                    descs.append({"mediaType": kind, "digest": "sha256:" + digest, "size": size})
                    blobs.append((digest, blob))
                manifest = json.dumps({
                    "schemaVersion": 2,
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                               "digest": "sha256:" + config_digest, "size": len(config)},
                    "layers": descs,
                }).encode()
                index = json.dumps({
                    "schemaVersion": 2,
                    "manifests": [{
                        "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "digest": "sha256:" + hashlib.sha256(manifest).hexdigest(),
                        "size": len(manifest),
                        "platform": {"architecture": arch, "os": "linux"},
                        "annotations": {"io.containerd.image.name": name,
                                        "org.opencontainers.image.ref.name": name},
                    }],
                }).encode()
                _add(t, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
                _add(t, "index.json", index)
                for d in ("blobs", "blobs/sha256"):
                    info = tarfile.TarInfo(d)
                    info.type = tarfile.DIRTYPE
                    info.mode = 0o755
                    info.mtime = MTIME
                    t.addfile(info)
                blobs += [(config_digest, config), (hashlib.sha256(manifest).hexdigest(), manifest)]
                for digest, blob in blobs:
                    _add(t, "blobs/sha256/" + digest, blob)
            else:
                raise ValueError("unknown archive format %r (oci or docker)" % fmt)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def main(argv):
    p = argparse.ArgumentParser(prog="oci_archive.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="the archive to write")
    p.add_argument("--name", required=True, help="the image's full reference")
    p.add_argument("--layer", action="append", required=True, metavar="DIR",
                   help="a directory tree, one layer (lowest first)")
    p.add_argument("--entrypoint", action="append", metavar="ARG")
    p.add_argument("--cmd", action="append", metavar="ARG")
    p.add_argument("--env", action="append", default=[], metavar="K=V")
    p.add_argument("--label", action="append", default=[], metavar="K=V")
    p.add_argument("--workdir")
    p.add_argument("--arch", default="amd64")
    p.add_argument("--no-gzip", dest="gzip", action="store_false")
    a = p.parse_args(argv)
    config = {}
    if a.entrypoint:
        config["Entrypoint"] = a.entrypoint
    if a.cmd:
        config["Cmd"] = a.cmd
    if a.env:
        config["Env"] = a.env
    if a.workdir:
        config["WorkingDir"] = a.workdir
    if a.label:
        config["Labels"] = dict(kv.split("=", 1) for kv in a.label)
    layers = []
    for d in a.layer:
        if not os.path.isdir(d):
            p.error("--layer %s: not a directory" % d)
        layer = Layer()
        layer.tree(d)
        layers.append(layer)
    write(a.out, a.name, layers, config, arch=a.arch, compress=a.gzip)


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (OSError, ValueError) as e:
        sys.exit("oci_archive.py: %s" % e)
