//! Prints the BIP-380 checksum of each descriptor given as an argument.
//!
//! `cargo run -p policy --example checksum -- 'wpkh(...)'` → `wpkh(...)#xxxxxxxx`,
//! handy when writing `allow_descriptors` / `deny_descriptors`.
#![forbid(unsafe_code)]

use std::io::Write as _;

fn main() {
    let mut out = std::io::stdout().lock();
    let mut failed = false;
    for arg in std::env::args().skip(1) {
        let body = policy::descriptor::checksum(&arg);
        match body {
            Some(sum) => {
                let _ = writeln!(out, "{arg}#{sum}");
            }
            None => {
                eprintln!("{arg}: contains a character outside the descriptor character set");
                failed = true;
            }
        }
    }
    if failed {
        std::process::exit(1);
    }
}
