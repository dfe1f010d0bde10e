//! `vnfhost-cni`: the CNI plugin; see [`vnfhost_cni`].
fn main() {
    std::process::exit(vnfhost_cni::main());
}
