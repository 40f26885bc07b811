//! `signer-faulty`: the `signer` CLI with fault injection armed, for the cluster
//! tests only (`SIGNER_FAULT_*`, see signer/src/fault.rs). Built with the test crate;
//! never installed. Nodes started by it (`cluster up`, `node start`) run this same
//! binary, so they obey fault variables too; the `signer` binary never does.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    signer::fault::arm();
    signer::cli::main()
}
