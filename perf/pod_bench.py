#!/usr/bin/env python3
"""Pod start and memory per pod: vnfhost VM pods against runc pods, in one containerd,
round by round in the same run (`vnfhost bench pod`), plus `vnfhost run` without
containerd.

- **Start**: from RunPodSandbox to the container's first output line ("started", the
  first thing its command does), as containerd's CRI log timestamps it; for `vnfhost
  run -d`, from the command to that line in the pod's log.
- **Memory**: 6 s after the first output (steady state), the total PSS
  (/proc/PID/smaps_rollup) of the pod's shim and everything under it (runc: the shim, pause and the container's `sleep`; vnfhost: the shim and
  the VM, QEMU here, with the guest memory it has touched), once the container runs;
  for `vnfhost run`, the keeper and the VM.

containerd, the vnfhost daemon and the VMs run on core 0; the switch polls on core 1.
Prints min/median/max per DUT and writes DIR/pod.md.

  sudo /var/cache/vnfhost/venv/bin/python perf/pod_bench.py [--rounds 10] [--warmup 1]

Needs scripts/setup.sh and a release build
(cargo build --release -p control -p vnfhost-cni -p containerd-shim-vnfhost).
"""
import argparse
import datetime
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "control/tests/cri"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cri_tool  # noqa: E402
import cri_bench  # noqa: E402

IMAGE = "docker.io/vnfhost/busybox:1"
CMD = ["sh", "-c", "echo started; exec sleep 600"]
# Seconds between the first output and the memory reading: a VM pod gives back what its
# boot touched (balloon) in the first seconds after its container starts.
SETTLE = 6.0


def children(pid):
    """pid and every process under it."""
    kids = {}
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % p) as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(p))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def pss_kib(pids):
    total = 0
    for p in pids:
        try:
            with open("/proc/%d/smaps_rollup" % p) as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def shim_of(sandbox):
    """The pid of the shim serving `sandbox` (its command line names the id)."""
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % p, "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if args and b"containerd-shim" in args[0] and sandbox.encode() in args:
            return int(p)
    return None


def first_line_time(path, timeout=240):
    """The CRI log timestamp of the first line of `path` (seconds since the epoch)."""
    t = time.monotonic()
    while time.monotonic() - t < timeout:
        try:
            with open(path) as f:
                line = f.readline()
        except OSError:
            line = ""
        if "started" in line:
            ts = line.split(" ", 1)[0]
            # RFC 3339 with nanoseconds: keep microseconds for datetime.
            main, frac = ts.rstrip("Z").split(".") if "." in ts else (ts.rstrip("Z"), "0")
            dt = datetime.datetime.strptime(main, "%Y-%m-%dT%H:%M:%S").replace(
                tzinfo=datetime.timezone.utc)
            return dt.timestamp() + float("0." + frac)
        time.sleep(0.01)
    raise SystemExit("no 'started' line in %s" % path)


def cri_pod(sock, handler, name, logs):
    os.makedirs(logs, exist_ok=True)
    t0 = time.time()
    r = cri_tool.main(["run", sock, name, "default", handler, logs])
    c = cri_tool.main(["start", sock, r["id"], name, "default", IMAGE, logs] + CMD)
    started = first_line_time(os.path.join(logs, "main.log")) - t0
    time.sleep(SETTLE)
    shim = shim_of(r["id"])
    pss = pss_kib(children(shim)) if shim else 0
    cri_tool.main(["stop", sock, r["id"]])
    cri_tool.main(["rm", sock, r["id"]])
    del c
    return started, pss


def run_pod(vnfhost, env, archive, name):
    t0 = time.time()
    subprocess.run(["taskset", "-c", "0", vnfhost, "run", "-d", "--name", name, "--image",
                    "oci-archive:" + archive, "--"] + CMD, check=True, capture_output=True,
                   env=env)
    log = os.path.join(env["VNFHOST_PODS"], name, "container.log")
    while True:
        try:
            with open(log) as f:
                if "started" in f.read():
                    break
        except OSError:
            pass
        if time.time() - t0 > 240:
            raise SystemExit("vnfhost run: no output in %s" % log)
        time.sleep(0.005)
    started = time.time() - t0
    time.sleep(SETTLE)
    import json
    with open(os.path.join(env["VNFHOST_PODS"], name, "state.json")) as f:
        keeper = json.load(f)["keeper"]
    pss = pss_kib(children(keeper))
    subprocess.run([vnfhost, "rm", "-f", name], capture_output=True, env=env)
    return started, pss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--out", default=os.path.join(REPO, "bench-results"))
    a = ap.parse_args()
    rel = os.path.join(REPO, "target/release")
    vnfhost, cni = os.path.join(rel, "vnfhost"), os.path.join(rel, "vnfhost-cni")
    shim = os.path.join(rel, "containerd-shim-vnfhost-v2")
    for b in (vnfhost, cni, shim):
        if not os.path.exists(b):
            raise SystemExit("%s missing: cargo build --release -p control -p vnfhost-cni "
                             "-p containerd-shim-vnfhost" % b)
    d = tempfile.mkdtemp(prefix="vnfhost-podb-", dir="/tmp")
    procs = []
    try:
        archive = os.path.join(d, "busybox.tar")
        cri_tool.image(archive, IMAGE)
        run = os.path.join(d, "run")
        os.makedirs(run)
        log = open(os.path.join(d, "daemon.log"), "w")
        daemon = subprocess.Popen(["taskset", "-c", "0", vnfhost, "daemon", "--run-dir", run],
                                  stdout=log, stderr=log)
        procs.append(daemon)
        api = os.path.join(run, "api.sock")
        cri_bench.wait_socket(api, daemon, log.name)
        topo = os.path.join(d, "t.yaml")
        with open(topo, "w") as f:
            f.write("switch: { cores: [1] }\nnetworks:\n"
                    "  - { name: pods, tenant: t, cidrs: [10.77.0.0/16], vlan: 10, gateway: [10.77.255.254] }\n")
        subprocess.run([vnfhost, "up", topo, "--api", api], check=True, capture_output=True)
        shims = os.path.join(d, "shims")
        os.makedirs(shims)
        os.symlink(shim, os.path.join(shims, "containerd-shim-vnfhost-v2"))
        os.environ["PATH"] = shims + ":" + os.environ["PATH"]
        os.environ["VNFHOST_API"] = api
        os.environ["VNFHOST_BIN"] = vnfhost
        conf = {"cniVersion": "1.0.0", "name": "vnfhost",
                "plugins": [{"type": "vnfhost-cni", "network": "pods", "api": api}]}
        p, sock, root = cri_bench.containerd(d, "c", conf, [cni])
        procs.append(p)
        with open(os.path.join(root, "containerd.toml"), "a") as f:
            f.write('  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]\n'
                    '    runtime_type = "io.containerd.runc.v2"\n'
                    '  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.vnfhost]\n'
                    '    runtime_type = "io.containerd.vnfhost.v2"\n')
        # Restart containerd with the vnfhost runtime handler added.
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=10)
        procs.pop()
        clog = open(os.path.join(root, "containerd.log"), "a")
        p = subprocess.Popen(["taskset", "-c", "0", "containerd", "--config",
                              os.path.join(root, "containerd.toml")], stdout=clog, stderr=clog)
        procs.append(p)
        cri_bench.wait_socket(sock, p, clog.name)
        env = dict(os.environ, VNFHOST_PODS=os.path.join(d, "pods"),
                   VNFHOST_IMAGES=os.path.join(d, "images"))
        res = {"runc pod": ([], []), "vnfhost VM pod (CRI)": ([], []),
               "vnfhost run": ([], [])}
        n = 0
        for r in range(a.warmup + a.rounds):
            for name in res:
                n += 1
                if name == "runc pod":
                    s, m = cri_pod(sock, "", "p%d" % n, os.path.join(d, "logs/p%d" % n))
                elif name.startswith("vnfhost VM"):
                    s, m = cri_pod(sock, "vnfhost", "p%d" % n, os.path.join(d, "logs/p%d" % n))
                else:
                    s, m = run_pod(vnfhost, env, archive, "r%d" % n)
                if r >= a.warmup:
                    res[name][0].append(s)
                    res[name][1].append(m)
            print("round %d/%d" % (r + 1, a.warmup + a.rounds), file=sys.stderr)
        lines = ["| metric | DUT | min | median | max |", "|---|---|---:|---:|---:|"]
        for name, (starts, mems) in res.items():
            lo, med, hi = cri_bench.stats(starts)
            lines.append("| start to first output | %s | %.3f s | %.3f s | %.3f s |" % (name, lo, med, hi))
        for name, (starts, mems) in res.items():
            lo, med, hi = cri_bench.stats(mems)
            lines.append("| PSS of the pod | %s | %.1f MB | %.1f MB | %.1f MB |" % (
                name, lo / 1024, med / 1024, hi / 1024))
        table = "\n".join(lines)
        print(table)
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "pod.md"), "w") as f:
            f.write("rounds %d (after %d warm-up), %s; QEMU %s\n\n%s\n" % (
                a.rounds, a.warmup, time.strftime("%Y-%m-%d"),
                "KVM" if cri_bench_hw() else "TCG (no vmx/svm: emulation-bound)", table))
    finally:
        for p in reversed(procs):
            if p is procs[0]:
                subprocess.run([vnfhost, "down", "--api", os.path.join(d, "run/api.sock")],
                               capture_output=True)
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        for dirpath, _, _ in os.walk(d):
            if dirpath.endswith("/netns"):
                for f in os.listdir(dirpath):
                    subprocess.run(["umount", os.path.join(dirpath, f)], capture_output=True)
        shutil.rmtree(d, ignore_errors=True)


def cri_bench_hw():
    with open("/proc/cpuinfo") as f:
        flags = f.read()
    return " vmx" in flags or " svm" in flags


if __name__ == "__main__":
    main()
