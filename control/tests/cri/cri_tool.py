#!/usr/bin/env python3
"""A small CRI v1 client for vnfhost's containerd tests, and the builder of the BusyBox
OCI image they run (no registry is reachable here).

Each subcommand prints one JSON object on stdout:

  image OUT.tar NAME [FMT [ARCH [MARKER]]]
                                      build an archive of /bin/busybox named NAME: FMT oci
                                      (default) or docker, ARCH amd64 (default) or another,
                                      MARKER the text of its /etc/image-marker
  run SOCK NAME NAMESPACE [HANDLER [LOGDIR]]   RunPodSandbox; {"id", "seconds"}
  status SOCK ID                      PodSandboxStatus; {"state", "ip", "netns"}
  start SOCK SANDBOX POD NAMESPACE IMAGE [LOGDIR [CMD...]]
                                      CreateContainer + StartContainer; {"id"}
                                      (default command: sleep 3600; log LOGDIR/main.log)
  cstatus SOCK CONTAINER              ContainerStatus; {"state", "exit_code"}
  exec SOCK CONTAINER CMD...          ExecSync; {"exit", "stdout", "stderr"}
  stop SOCK ID / rm SOCK ID           StopPodSandbox / RemovePodSandbox; {}
  list SOCK                           ListPodSandbox; {"ids": [...]}

The CRI stubs come from the PyPI package container-runtime-interface-api.
"""
import hashlib
import io
import os
import json
import sys
import tarfile
import time

APPLETS = ["sh", "sleep", "ping", "ip", "cat", "echo", "ls", "hostname", "true", "ifconfig", "id", "env", "printf", "wc"]


def sha(b):
    return hashlib.sha256(b).hexdigest()


def image(out, name, fmt="oci", arch="amd64", marker="vnfhost test image"):
    layer_buf = io.BytesIO()
    with tarfile.open(fileobj=layer_buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for d in ["bin", "tmp", "proc", "sys", "dev", "etc", "root"]:
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if d == "tmp" else 0o755
            t.addfile(info)
        with open("/bin/busybox", "rb") as f:
            data = f.read()
        info = tarfile.TarInfo("bin/busybox")
        info.size = len(data)
        info.mode = 0o755
        t.addfile(info, io.BytesIO(data))
        for a in APPLETS:
            info = tarfile.TarInfo("bin/" + a)
            info.type = tarfile.SYMTYPE
            info.linkname = "busybox"
            t.addfile(info)
        # A file and a variable only this image has (VM pods must run the image itself).
        marker = (marker + "\n").encode()
        info = tarfile.TarInfo("etc/image-marker")
        info.size = len(marker)
        info.mode = 0o644
        t.addfile(info, io.BytesIO(marker))
    layer = layer_buf.getvalue()
    config = json.dumps({
        "architecture": arch,
        "os": "linux",
        "config": {"Cmd": ["/bin/sleep", "3600"], "Env": ["PATH=/bin", "IMAGE_VAR=from-the-image"]},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + sha(layer)]},
    }).encode()
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": "sha256:" + sha(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": "sha256:" + sha(layer), "size": len(layer)}],
    }).encode()
    index = json.dumps({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": "sha256:" + sha(manifest), "size": len(manifest),
                       "annotations": {"io.containerd.image.name": name,
                                       "org.opencontainers.image.ref.name": name.rsplit(":", 1)[-1]}}],
    }).encode()
    if fmt == "docker":
        # `docker save` layout: manifest.json naming the config and layer files.
        with tarfile.open(out, mode="w") as t:
            def add(path, data):
                info = tarfile.TarInfo(path)
                info.size = len(data)
                info.mode = 0o644
                t.addfile(info, io.BytesIO(data))
            cfg_name = sha(config) + ".json"
            add(cfg_name, config)
            add("layer0/layer.tar", layer)
            add("manifest.json", json.dumps([{"Config": cfg_name, "RepoTags": [name],
                                              "Layers": ["layer0/layer.tar"]}]).encode())
        return {"image": name}
    with tarfile.open(out, mode="w") as t:
        def add(path, data):
            info = tarfile.TarInfo(path)
            info.size = len(data)
            info.mode = 0o644
            t.addfile(info, io.BytesIO(data))
        add("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        add("index.json", index)
        for blob in (layer, config, manifest):
            add("blobs/sha256/" + sha(blob), blob)
    return {"image": name}


def client(sock):
    import grpc
    from cri_api.v1 import api_pb2_grpc as rpc
    ch = grpc.insecure_channel("unix://" + sock)
    return rpc.RuntimeServiceStub(ch)


def sandbox_config(name, namespace, log_dir=""):
    from cri_api.v1 import api_pb2 as pb
    return pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, uid="uid-" + name, namespace=namespace, attempt=0),
        hostname=name,
        log_directory=log_dir,
        linux=pb.LinuxPodSandboxConfig(
            security_context=pb.LinuxSandboxSecurityContext(
                namespace_options=pb.NamespaceOption(network=pb.POD))),
    )


def main(argv):
    cmd = argv[0]
    if cmd == "image":
        return image(argv[1], argv[2], *argv[3:6])
    from cri_api.v1 import api_pb2 as pb
    rt = client(argv[1])
    if cmd == "run":
        t = time.monotonic()
        log_dir = argv[5] if len(argv) > 5 else ""
        r = rt.RunPodSandbox(pb.RunPodSandboxRequest(
            config=sandbox_config(argv[2], argv[3], log_dir),
            runtime_handler=argv[4] if len(argv) > 4 else ""), timeout=120)
        return {"id": r.pod_sandbox_id, "seconds": time.monotonic() - t}
    if cmd == "status":
        r = rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=argv[2], verbose=True), timeout=30)
        netns = ""
        info = json.loads(r.info.get("info", "{}") or "{}")
        for ns in info.get("runtimeSpec", {}).get("linux", {}).get("namespaces", []):
            if ns.get("type") == "network":
                netns = ns.get("path", "")
        return {"state": pb.PodSandboxState.Name(r.status.state), "ip": r.status.network.ip, "netns": netns}
    if cmd == "start":
        sandbox, pod, namespace, img = argv[2:6]
        log_dir = argv[6] if len(argv) > 6 else ""
        command = argv[7:] or ["/bin/sleep", "3600"]
        c = rt.CreateContainer(pb.CreateContainerRequest(
            pod_sandbox_id=sandbox,
            config=pb.ContainerConfig(
                metadata=pb.ContainerMetadata(name=os.path.basename(log_dir.rstrip("/")) or "main"),
                image=pb.ImageSpec(image=img),
                command=command,
                log_path="main.log" if log_dir else ""),
            sandbox_config=sandbox_config(pod, namespace, log_dir)), timeout=60)
        rt.StartContainer(pb.StartContainerRequest(container_id=c.container_id), timeout=60)
        return {"id": c.container_id}
    if cmd == "cstatus":
        r = rt.ContainerStatus(pb.ContainerStatusRequest(container_id=argv[2]), timeout=30)
        return {"state": pb.ContainerState.Name(r.status.state), "exit_code": r.status.exit_code}
    if cmd == "exec":
        r = rt.ExecSync(pb.ExecSyncRequest(container_id=argv[2], cmd=argv[3:], timeout=20), timeout=30)
        return {"exit": r.exit_code, "stdout": r.stdout.decode(errors="replace"),
                "stderr": r.stderr.decode(errors="replace")}
    if cmd == "stop":
        rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=argv[2]), timeout=60)
        return {}
    if cmd == "rm":
        rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=argv[2]), timeout=60)
        return {}
    if cmd == "list":
        r = rt.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=30)
        return {"ids": [s.id for s in r.items]}
    raise SystemExit("unknown command " + cmd)


if __name__ == "__main__":
    try:
        print(json.dumps(main(sys.argv[1:])))
    except Exception as e:  # the caller reads the message
        print(json.dumps({"error": "%s: %s" % (type(e).__name__, e)}))
        sys.exit(1)
