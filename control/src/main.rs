//! `vnfhost`: the command-line entry point. Parses arguments and calls the library.

fn main() {
    let code = control::cli::main(std::env::args_os().skip(1).collect());
    std::process::exit(code);
}
