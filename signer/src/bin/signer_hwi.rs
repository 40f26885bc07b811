//! `signer-hwi`: Bitcoin Core external signer for the cluster (`bitcoind
//! -signer=signer-hwi`); see signer/src/hwi and docs/HWI.md.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    signer::hwi::main()
}
