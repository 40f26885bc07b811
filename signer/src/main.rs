//! `signer`: the node daemon and operator CLI. This binary never arms fault
//! injection (see `signer::fault`).
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    signer::cli::main()
}
