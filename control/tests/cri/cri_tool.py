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
import os
import json
import sys
import time

# The archive writer the node image uses too (deploy/build-node-image.sh); no
# deploy/__pycache__ left behind by the tests.
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "deploy"))
import oci_archive  # noqa: E402

APPLETS = ["sh", "sleep", "ping", "ip", "cat", "echo", "ls", "hostname", "true", "ifconfig", "id", "env", "printf", "wc"]


def image(out, name, fmt="oci", arch="amd64", marker="vnfhost test image"):
    layer = oci_archive.Layer()
    for d in ["bin", "tmp", "proc", "sys", "dev", "etc", "root"]:
        layer.dir(d, 0o1777 if d == "tmp" else 0o755)
    layer.copy("bin/busybox", "/bin/busybox", 0o755)
    for a in APPLETS:
        layer.symlink("bin/" + a, "busybox")
    # A file and a variable only this image has (VM pods must run the image itself).
    layer.file("etc/image-marker", (marker + "\n").encode())
    config = {"Cmd": ["/bin/sleep", "3600"], "Env": ["PATH=/bin", "IMAGE_VAR=from-the-image"]}
    oci_archive.write(out, name, [layer], config, arch=arch, fmt=fmt, compress=False)
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
