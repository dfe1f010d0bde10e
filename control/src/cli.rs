//! Argument parsing for `vnfhost` and dispatch to the subcommands.

use std::ffi::OsString;

use crate::args::Parsed;

/// `vnfhost --help`: the commands; each one's options are in its own `--help`.
pub const USAGE: &str = "\
usage: vnfhost <command> [options]

commands:
  switch      run the switch in the foreground
  daemon      run the daemon in the foreground: it owns the desired topology, starts the
              switch and the pods, keeps them running and serves the API
  up FILE     apply a topology.yaml through the daemon (`up --check FILE`: only check it)
  down        stop the pods and the switch and remove what they left
  status      pods, ports with rates, drops by reason, router and polling-core load
  run         run a container image in its own pod VM (`vnfhost run --help`)
  exec        run a command in a pod's container (`-it` for a terminal)
  logs        a pod's output (`-f` to follow)
  ps          the pods `vnfhost run` made
  rm          remove pods (`-f` stops a running one)
  vm run      run a pod VM in the foreground; its serial console is stdout
  vm payload  write a built-in guest payload used by tests and benchmarks
  bench       benchmarks (`bench p2p`, `bench vm`, `bench churn`), run by vnfhost-bench
  help [COMMAND]
              this text, or a command's (as `vnfhost COMMAND --help`)

`vnfhost COMMAND --help` (or -h) lists a command's options.
";

/// `vnfhost vm --help`.
const VM_USAGE: &str = "\
usage: vnfhost vm run [options]
       vnfhost vm payload NAME --out FILE

  run      run a pod VM in the foreground (`vnfhost vm run --help`)
  payload  write a built-in guest payload (`vnfhost vm payload --help`)
";

/// Runs `vnfhost` with `args` (without the program name); returns the exit code.
pub fn main(args: Vec<OsString>) -> i32 {
    init_logging();
    let mut it = args.into_iter();
    let cmd = it
        .next()
        .and_then(|c| c.into_string().ok())
        .unwrap_or_default();
    let rest: Vec<OsString> = it.collect();
    let ok = |r: Result<(), String>| r.map(|()| 0);
    let r = match cmd.as_str() {
        "switch" => crate::switch_cmd::parse_switch(rest)
            .and_then(|p| help_or(p, |a| ok(crate::switch_cmd::run(&a)))),
        "help" | "--help" | "-h" => {
            if rest.is_empty() {
                print!("{USAGE}");
                Ok(0)
            } else {
                // `vnfhost help vm run` is `vnfhost vm run --help`.
                let mut a = rest;
                a.push("--help".into());
                return main(a);
            }
        }
        "bench" => ok(bench(rest)),
        "vm" => vm(rest),
        "run" => crate::pod_cmd::run(rest),
        "exec" => crate::pod_cmd::exec(rest),
        "logs" => crate::pod_cmd::logs(rest),
        "ps" => crate::pod_cmd::ps(rest),
        "rm" => crate::pod_cmd::rm(rest),
        // The keeper of a pod `vnfhost run` (or the daemon) made; not in the usage.
        "pod" => match rest.split_first() {
            Some((k, dir)) if k == "keep" => crate::pod_cmd::keep(dir.to_vec()),
            _ => Err("pod: expected `pod keep DIR` (used by `vnfhost run`)".into()),
        },
        "up" => ok(crate::ctl_cmd::up(rest)),
        "down" => ok(crate::ctl_cmd::down(rest)),
        "status" => ok(crate::ctl_cmd::status(rest)),
        // Run by the daemon for each pod's console; not listed in the usage.
        "console-log" => crate::console_log::main(rest),
        "daemon" => crate::ctl_cmd::parse_daemon(rest)
            .and_then(|p| help_or(p, |a| ok(crate::daemon::run(&a)))),
        "" => Err(format!("no command given\n{USAGE}")),
        other => Err(format!("unknown command {other:?}\n{USAGE}")),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vnfhost: {e}");
            2
        }
    }
}

/// Prints the help `p` asks for (exit code 0), or runs the command with its options.
fn help_or<T>(p: Parsed<T>, run: impl FnOnce(T) -> Result<i32, String>) -> Result<i32, String> {
    match p {
        Parsed::Run(a) => run(a),
        Parsed::Help(text) => {
            print!("{text}");
            Ok(0)
        }
    }
}

/// `vnfhost vm run|payload …`.
fn vm(rest: Vec<OsString>) -> Result<i32, String> {
    let sub = rest
        .first()
        .and_then(|s| s.to_str())
        .unwrap_or("")
        .to_string();
    let args = rest.into_iter().skip(1).collect();
    match sub.as_str() {
        "run" => crate::vm_cmd::parse_run(args).and_then(|p| help_or(p, crate::vm_cmd::run)),
        "payload" => crate::vm_cmd::payload(args),
        "help" | "--help" | "-h" => {
            print!("{VM_USAGE}");
            Ok(0)
        }
        "" => Err(format!("vm: expected `vm run` or `vm payload`\n{VM_USAGE}")),
        other => Err(format!("vm: unknown subcommand {other:?}\n{VM_USAGE}")),
    }
}

/// `vnfhost bench --help` when the harness is not built (it has the real help).
const BENCH_USAGE: &str = "\
usage: vnfhost bench p2p [options]
       vnfhost bench vm [options]
       vnfhost bench churn [options]

  p2p    forwarding benchmark: vnfhost against DPDK testpmd and OVS-DPDK, interleaved
  vm     pod VM monitor: vnfhost's kvm backend against QEMU microvm, same payload
  churn  the largest gap in a flow while the switch's spec changes

The benchmarks are vnfhost-bench (package perf), a binary beside vnfhost that is not
built here: `cargo build --release -p perf`. Then `vnfhost bench p2p --help` (vm,
churn) lists a benchmark's options.
";

/// `vnfhost bench ARGS…`: runs `vnfhost-bench ARGS…` in this process's place. The
/// benchmark harness is a binary of its own (package `perf`) beside this one, so that the
/// node binary does not link it; it has the benchmarks' help too.
fn bench(args: Vec<OsString>) -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    let me = std::env::current_exe().map_err(|e| format!("bench: own executable: {e}"))?;
    let bench = me.with_file_name("vnfhost-bench");
    if !bench.is_file() {
        if args.iter().any(|a| a == "--help" || a == "-h") {
            print!("{BENCH_USAGE}");
            return Ok(());
        }
        return Err(format!(
            "bench: {} not found: the benchmark harness is its own binary, built beside \
             vnfhost by `cargo build --release` (or `cargo build --release -p perf`)",
            bench.display()
        ));
    }
    let e = std::process::Command::new(&bench).args(args).exec();
    Err(format!("bench: {}: {e}", bench.display()))
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("VNFHOST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}
