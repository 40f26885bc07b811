//! Generates the public, TEST-ONLY Paillier prime sets in `fixtures/test-primes/`.
//!
//! `cargo run -p signer-protocol --example gen-test-primes --release [-- END [JOBS [FIRST]]]`
//! writes `primes-FIRST.json` .. `primes-(END-1).json` (FIRST defaults to 0).
//!
//! The files are published with the source: never use them outside tests.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Instant;

use signer_protocol::ecdsa::PrimeSet;

fn main() {
    let mut args = std::env::args().skip(1);
    let count: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(5);
    let jobs: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(2).max(1);
    let first: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/test-primes");
    std::fs::create_dir_all(&dir).expect("create fixtures dir");
    let next = std::sync::atomic::AtomicUsize::new(first);
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if i >= count {
                    break;
                }
                let start = Instant::now();
                let set = PrimeSet::generate(None);
                let json = set.to_json().expect("encode prime set");
                // round trip through the validating parser before writing
                PrimeSet::from_json(&json).expect("generated set validates");
                let path = dir.join(format!("primes-{i}.json"));
                std::fs::write(&path, json.as_bytes()).expect("write fixture");
                println!("{}: {:.1} s", path.display(), start.elapsed().as_secs_f64());
            });
        }
    });
}
