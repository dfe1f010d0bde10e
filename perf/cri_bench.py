#!/usr/bin/env python3
"""Pod start-up with vnfhost-cni against containerd's reference bridge plugin, on one
machine in one run (the Kubernetes issue's speed bar: sandbox ready <= 0.5 s, CNI ADD
<= 10 ms median).

Two containerd 1.6 instances (private roots and sockets), one whose pod network is
vnfhost-cni (a tap on vnfhost's switch), one with the bridge + host-local plugins, run
the same BusyBox sandbox alternately, round by round. Measured:

- RunPodSandbox, as a CRI client sees it (runc, namespaces, CNI);
- CNI ADD alone: the plugin executed directly for a fresh network namespace, as the
  runtime executes it (process start included), then DEL.

containerd, the vnfhost daemon and the plugins run on core 0; the switch polls on core 1.
Prints min/median/max per DUT and the ratio of medians.

  sudo /var/cache/vnfhost/venv/bin/python perf/cri_bench.py [--rounds 20] [--warmup 3]

Needs scripts/setup.sh and a release build (cargo build --release -p control -p vnfhost-cni).
"""
import argparse
import json
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
import cri_tool  # noqa: E402

IMAGE = "docker.io/vnfhost/busybox:1"


def wait_socket(path, proc, log, timeout=30):
    t = time.monotonic()
    while not os.path.exists(path):
        if proc.poll() is not None or time.monotonic() - t > timeout:
            raise SystemExit("%s did not come up; see %s" % (path, log))
        time.sleep(0.05)


def containerd(d, name, conflist, binaries):
    root = os.path.join(d, name)
    bin_dir, conf_dir = os.path.join(root, "cni-bin"), os.path.join(root, "cni-conf")
    os.makedirs(bin_dir)
    os.makedirs(conf_dir)
    for f in os.listdir("/usr/lib/cni"):
        os.symlink(os.path.join("/usr/lib/cni", f), os.path.join(bin_dir, f))
    for f in binaries:
        os.symlink(f, os.path.join(bin_dir, os.path.basename(f)))
    with open(os.path.join(conf_dir, "10-net.conflist"), "w") as f:
        json.dump(conflist, f)
    cfg = os.path.join(root, "containerd.toml")
    with open(cfg, "w") as f:
        f.write("""version = 2
root = "{r}/root"
state = "{r}/state"
[grpc]
  address = "{r}/c.sock"
[ttrpc]
  address = "{r}/c.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{r}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{img}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{b}"
    conf_dir = "{c}"
    max_conf_num = 1
""".format(r=root, img=IMAGE, b=bin_dir, c=conf_dir))
    log = open(os.path.join(root, "containerd.log"), "w")
    p = subprocess.Popen(["taskset", "-c", "0", "containerd", "--config", cfg],
                         stdout=log, stderr=log)
    sock = os.path.join(root, "c.sock")
    wait_socket(sock, p, log.name)
    subprocess.run(["ctr", "-a", sock, "-n", "k8s.io", "images", "import",
                    os.path.join(d, "busybox.tar")], check=True, capture_output=True)
    return p, sock, root


def cni_add_del(plugin, conf, netns, cid):
    env = {"CNI_CONTAINERID": cid, "CNI_NETNS": "/var/run/netns/" + netns,
           "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    data = json.dumps(conf).encode()
    t = time.monotonic()
    r = subprocess.run(["taskset", "-c", "0", plugin], input=data, capture_output=True,
                       env=dict(env, CNI_COMMAND="ADD"))
    took = time.monotonic() - t
    if r.returncode != 0:
        raise SystemExit("%s ADD: %s" % (plugin, r.stdout.decode()))
    subprocess.run([plugin], input=data, capture_output=True, env=dict(env, CNI_COMMAND="DEL"))
    return took


def stats(xs):
    return min(xs), statistics.median(xs), max(xs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(REPO, "bench-results"))
    a = ap.parse_args()
    vnfhost = os.path.join(REPO, "target/release/vnfhost")
    cni = os.path.join(REPO, "target/release/vnfhost-cni")
    for b in (vnfhost, cni):
        if not os.path.exists(b):
            raise SystemExit("%s missing: cargo build --release -p control -p vnfhost-cni" % b)
    d = tempfile.mkdtemp(prefix="vnfhost-crib-", dir="/tmp")
    procs = []
    try:
        cri_tool.image(os.path.join(d, "busybox.tar"), IMAGE)
        run = os.path.join(d, "run")
        os.makedirs(run)
        log = open(os.path.join(d, "daemon.log"), "w")
        daemon = subprocess.Popen(["taskset", "-c", "0", vnfhost, "daemon", "--run-dir", run],
                                  stdout=log, stderr=log)
        procs.append(daemon)
        api = os.path.join(run, "api.sock")
        wait_socket(api, daemon, log.name)
        topo = os.path.join(d, "t.yaml")
        with open(topo, "w") as f:
            f.write("switch: { cores: [1] }\nnetworks:\n"
                    "  - { name: pods, tenant: t, cidrs: [10.77.0.0/16], vlan: 10, gateway: [10.77.255.254] }\n")
        subprocess.run([vnfhost, "up", topo, "--api", api], check=True, capture_output=True)
        vconf = {"cniVersion": "1.0.0", "name": "vnfhost", "type": "vnfhost-cni",
                 "network": "pods", "api": api}
        bconf = {"cniVersion": "1.0.0", "name": "bridge", "type": "bridge", "bridge": "vnfhb0",
                 "isGateway": True, "ipam": {"type": "host-local", "subnet": "10.78.0.0/16",
                                             "dataDir": os.path.join(d, "ipam")}}
        duts = {}
        p, sock, _ = containerd(d, "vnfhost", {"cniVersion": "1.0.0", "name": "vnfhost",
                                               "plugins": [dict(vconf, type="vnfhost-cni")]}, [cni])
        procs.append(p)
        duts["vnfhost-cni"] = (sock, cni, vconf)
        p, sock, _ = containerd(d, "bridge", {"cniVersion": "1.0.0", "name": "bridge",
                                              "plugins": [dict(bconf)]}, [])
        procs.append(p)
        duts["bridge"] = (sock, "/usr/lib/cni/bridge", bconf)

        sandbox = {k: [] for k in duts}
        add = {k: [] for k in duts}
        n = 0
        for r in range(a.warmup + a.rounds):
            for name, (sock, plugin, conf) in duts.items():
                n += 1
                pod = "p%d" % n
                res = cri_tool.main(["run", sock, pod, "default"])
                cri_tool.main(["stop", sock, res["id"]])
                cri_tool.main(["rm", sock, res["id"]])
                ns = "vnfhb%d-%d" % (os.getpid(), n)
                subprocess.run(["ip", "netns", "add", ns], check=True)
                try:
                    took = cni_add_del(plugin, conf, ns, "bench%d" % n)
                finally:
                    subprocess.run(["ip", "netns", "del", ns])
                if r >= a.warmup:
                    sandbox[name].append(res["seconds"])
                    add[name].append(took)
            print("round %d/%d" % (r + 1, a.warmup + a.rounds), file=sys.stderr)
        lines = ["| metric | DUT | min | median | max |", "|---|---|---:|---:|---:|"]
        for metric, data, unit, scale in (("RunPodSandbox", sandbox, "s", 1.0),
                                           ("CNI ADD alone", add, "ms", 1e3)):
            for name, xs in data.items():
                lo, med, hi = (x * scale for x in stats(xs))
                lines.append("| %s | %s | %.3f %s | %.3f %s | %.3f %s |" % (
                    metric, name, lo, unit, med, unit, hi, unit))
            ratio = statistics.median(data["vnfhost-cni"]) / statistics.median(data["bridge"])
            lines.append("| %s | vnfhost-cni / bridge | | %.2fx | |" % (metric, ratio))
        table = "\n".join(lines)
        print(table)
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "cri.md"), "w") as f:
            f.write("rounds %d (after %d warm-up), %s\n\n%s\n" % (
                a.rounds, a.warmup, time.strftime("%Y-%m-%d"), table))
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
        subprocess.run(["ip", "link", "del", "vnfhb0"], capture_output=True)
        for dirpath, _, _ in os.walk(d):
            if dirpath.endswith("/netns"):
                for f in os.listdir(dirpath):
                    subprocess.run(["umount", os.path.join(dirpath, f)], capture_output=True)
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
