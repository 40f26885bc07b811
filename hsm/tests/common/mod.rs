//! Helpers shared by the integration tests.
#![allow(dead_code)]

use hsm::envelope;
use hsm::{Aad, HsmError, KeyWrapper, RecordKind};

pub fn aad(node: &str, key: &str, kind: RecordKind) -> Aad {
    Aad::new(node, key, kind).expect("valid aad")
}

/// A secret that looks like what the node stores (a key share as JSON).
pub const SECRET: &[u8] = br#"{"curve":"secp256k1","i":1,"x":"5f1c0ffee0ddf00d5f1c0ffee0ddf00d5f1c0ffee0ddf00d5f1c0ffee0ddf00d"}"#;

/// Flips bit `bit_of(i)` of every byte `i` in `blob` (every bit when `all_bits`), and
/// asserts each modified blob fails to open with an integrity-class error.
/// Returns the number of variants tried.
pub fn assert_every_flip_fails(
    w: &dyn KeyWrapper,
    aad: &Aad,
    blob: &[u8],
    all_bits: bool,
) -> usize {
    let mut tried = 0;
    for i in 0..blob.len() {
        let bits: Vec<u8> = if all_bits {
            (0..8).collect()
        } else {
            vec![(i % 8) as u8]
        };
        for bit in bits {
            let mut bad = blob.to_vec();
            bad[i] ^= 1 << bit;
            match envelope::open(w, aad, &bad) {
                Ok(_) => panic!("blob with bit {bit} of byte {i} flipped opened"),
                Err(
                    HsmError::Authentication { .. }
                    | HsmError::Malformed { .. }
                    | HsmError::KekMismatch { .. }
                    | HsmError::TooLarge { .. },
                ) => {}
                Err(other) => panic!("byte {i} bit {bit}: unexpected error class {other:?}"),
            }
            tried += 1;
        }
    }
    tried
}
