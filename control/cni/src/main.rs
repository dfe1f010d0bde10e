//! `vnfhost-cni`: the CNI plugin; see [`vnfhost_cni`].

/// `vnfhost-cni --help`. A runtime runs the plugin without arguments.
const HELP: &str = "\
usage: vnfhost-cni   (run by a container runtime, not by hand)

vnfhost's CNI plugin (CNI 0.4.0, 1.0.0, 1.1.0): a client of the vnfhost daemon's API.
As the CNI spec says, it takes no arguments: the runtime gives the command and the
container in environment variables (CNI_COMMAND ADD, DEL, CHECK, GC, STATUS or VERSION,
CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME, CNI_ARGS) and the network configuration on
stdin, and reads the result or a CNI error object on stdout.

network configuration, besides cniVersion, name and type:
  network      the topology network (required)
  namespaces   { NAMESPACE: NETWORK }: pods of these namespaces get these networks
  interface    tap (default) or vhost-user; CNI_ARGS VNFHOST_INTERFACE=... per pod
  api          the daemon's socket (default /run/vnfhost/api.sock)

options:
  -h, --help   this text
";

fn main() {
    if std::env::args().skip(1).any(|a| a == "--help" || a == "-h") {
        print!("{HELP}");
        return;
    }
    std::process::exit(vnfhost_cni::main());
}
