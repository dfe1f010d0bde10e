//! `vnfhost-cni`: the CNI plugin; see [`control::cni`].
fn main() {
    std::process::exit(control::cni::main());
}
