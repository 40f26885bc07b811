//! Wallet tests. A test master xprv stands in for the threshold key (the threshold
//! signing itself is tested elsewhere); BDK builds PSBTs for the exported
//! descriptors as an external wallet would.
#![allow(clippy::unwrap_used)]

use std::str::FromStr;

use base64::Engine as _;
use bdk_wallet::chain::{BlockId, ConfirmationBlockTime};
use bdk_wallet::test_utils::{insert_anchor, insert_checkpoint, insert_tx};
use bdk_wallet::{KeychainKind, SignOptions, Wallet};
use bitcoin::bip32::{ChildNumber, DerivationPath, Xpriv, Xpub};
use bitcoin::hashes::Hash as _;
use bitcoin::key::{Keypair, TapTweak};
use bitcoin::psbt::{Psbt, PsbtSighashType};
use bitcoin::secp256k1::Message;
use bitcoin::sighash::{EcdsaSighashType, SighashCache};
use bitcoin::{
    absolute, transaction, Amount, BlockHash, FeeRate, Network, NetworkKind, OutPoint, ScriptBuf,
    Sequence, Transaction, TxIn, TxOut, Txid, Witness,
};
use proptest::prelude::*;

use super::keys::secp;
use super::*;

const NET: Network = Network::Regtest;
/// A regtest address of nobody in these tests.
const FOREIGN_ADDR: &str = "bcrt1q3qtze4ys45tgdvguj66zrk4fu6hq3a3v9pfly5";

struct TestKey {
    xprv: Xpriv,
    key: WalletKey,
}

fn test_key(kind: KeyKind, seed: u8) -> TestKey {
    let xprv = Xpriv::new_master(NetworkKind::Test, &[seed; 32]).unwrap();
    let xpub = Xpub::from_priv(secp(), &xprv);
    let key = WalletKey::new(format!("{kind}-{seed}"), kind, xpub, NET)
        .with_gap(60)
        .unwrap();
    TestKey { xprv, key }
}

fn bdk_wallet(tk: &TestKey) -> Wallet {
    let (recv, change) = tk.key.single_path_descriptors();
    Wallet::create(recv, change)
        .network(NET)
        .create_wallet_no_persist()
        .unwrap()
}

/// A confirmed transaction paying `value` to `script` (plus a foreign output).
fn funding_tx(script: ScriptBuf, value: u64, n: u8) -> Transaction {
    Transaction {
        version: transaction::Version::TWO,
        lock_time: absolute::LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint {
                txid: Txid::from_byte_array([n; 32]),
                vout: 1,
            },
            script_sig: ScriptBuf::new(),
            sequence: Sequence::MAX,
            witness: Witness::new(),
        }],
        output: vec![
            TxOut {
                value: Amount::from_sat(value),
                script_pubkey: script,
            },
            TxOut {
                value: Amount::from_sat(5_000),
                script_pubkey: parse_address(FOREIGN_ADDR, NET).unwrap().script_pubkey(),
            },
        ],
    }
}

fn fund_bdk(wallet: &mut Wallet, tx: Transaction, height: u32) {
    let txid = tx.compute_txid();
    let block = BlockId {
        height,
        hash: BlockHash::from_byte_array([height as u8; 32]),
    };
    insert_checkpoint(wallet, block);
    insert_tx(wallet, tx);
    insert_anchor(
        wallet,
        txid,
        ConfirmationBlockTime {
            block_id: block,
            confirmation_time: u64::from(height),
        },
    );
}

/// BDK wallet for `tk` funded with one output per value at receive indexes 0, 1, ...
fn funded_bdk(tk: &TestKey, values: &[u64]) -> Wallet {
    let mut w = bdk_wallet(tk);
    for (i, v) in values.iter().enumerate() {
        let addr = w.reveal_next_address(KeychainKind::External).address;
        let tx = funding_tx(addr.script_pubkey(), *v, i as u8 + 1);
        fund_bdk(&mut w, tx, 10 + i as u32);
    }
    w
}

fn bdk_psbt(w: &mut Wallet, amount: u64) -> Psbt {
    let mut b = w.build_tx();
    b.add_recipient(
        parse_address(FOREIGN_ADDR, NET).unwrap().script_pubkey(),
        Amount::from_sat(amount),
    )
    .fee_rate(FeeRate::from_sat_per_vb_u32(3));
    b.finish().unwrap()
}

fn child(tk: &TestKey, path: &[u32]) -> bitcoin::secp256k1::SecretKey {
    let p: Vec<ChildNumber> = path
        .iter()
        .map(|&i| ChildNumber::from_normal_idx(i).unwrap())
        .collect();
    tk.xprv
        .derive_priv(secp(), &DerivationPath::from(p))
        .unwrap()
        .private_key
}

/// Signs every reported sighash with the child key, as the threshold signers would,
/// and fills the PSBT through the verifying fill functions.
fn sign_all(tk: &TestKey, v: &ValidatedPsbt) -> Psbt {
    let mut psbt = v.psbt.clone();
    for inp in &v.inputs {
        let sk = child(tk, &inp.path);
        let msg = Message::from_digest(inp.digest());
        match inp.kind {
            KeyKind::Ecdsa => {
                let sig = secp().sign_ecdsa(&msg, &sk);
                fill_ecdsa_signature(&mut psbt, inp.input, inp.pubkey, sig).unwrap();
            }
            KeyKind::Taproot => {
                let kp = Keypair::from_secret_key(secp(), &sk).tap_tweak(secp(), None);
                let sig = secp().sign_schnorr_no_aux_rand(&msg, &kp.to_keypair());
                fill_taproot_signature(&mut psbt, inp.input, sig).unwrap();
            }
        }
    }
    psbt
}

fn strict() -> IntakeLimits {
    IntakeLimits {
        require_non_witness_utxo: true,
        ..IntakeLimits::default()
    }
}

fn b64(psbt: &Psbt) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .encode(psbt.serialize())
        .into_bytes()
}

fn code<T: std::fmt::Debug>(r: Result<T, WalletError>) -> &'static str {
    r.unwrap_err().code()
}

// ---------------------------------------------------------------- keys

#[test]
fn addresses_and_descriptors_agree_with_bdk_and_the_key_listing() {
    for kind in [KeyKind::Ecdsa, KeyKind::Taproot] {
        let tk = test_key(kind, 7);
        let w = bdk_wallet(&tk);
        for i in [0u32, 1, 17] {
            let ext = w.peek_address(KeychainKind::External, i).address;
            let int = w.peek_address(KeychainKind::Internal, i).address;
            assert_eq!(tk.key.receive_address(i).unwrap(), ext);
            assert_eq!(tk.key.change_address(i).unwrap(), int);
            assert_eq!(
                tk.key.find_path(&ext.script_pubkey()),
                Some(ScriptPath { chain: 0, index: i })
            );
            assert_eq!(
                tk.key.find_path(&int.script_pubkey()),
                Some(ScriptPath { chain: 1, index: i })
            );
        }
        // beyond the lookahead: not found by scanning, but still derivable
        let far = tk.key.receive_script(tk.key.gap() + 5).unwrap();
        assert_eq!(tk.key.find_path(&far), None);
        assert!(tk.key.owns_at(
            &far,
            ScriptPath {
                chain: 0,
                index: tk.key.gap() + 5
            }
        ));
    }
    assert_eq!(
        code(test_key(KeyKind::Ecdsa, 1).key.script_at(0, 1 << 31)),
        "derivation_invalid"
    );
}

/// `pubkey_at` remembers what it derives: the remembered key is the one the private
/// key derives at that path, asked first or again, through a clone, and never the
/// key of another wallet key at the same path.
#[test]
fn a_remembered_public_key_is_the_key_derived_at_its_path() {
    for kind in [KeyKind::Ecdsa, KeyKind::Taproot] {
        let a = test_key(kind, 31);
        let b = test_key(kind, 32);
        let clone = a.key.clone();
        for (chain, index) in [(0, 0), (1, 5), (0, 5), (1, 70_000)] {
            let path = [
                ChildNumber::from_normal_idx(chain).unwrap(),
                ChildNumber::from_normal_idx(index).unwrap(),
            ];
            let want = |tk: &TestKey| {
                Xpub::from_priv(secp(), &tk.xprv.derive_priv(secp(), &path).unwrap()).public_key
            };
            let first = a.key.pubkey_at(chain, index).unwrap();
            assert_eq!(first, want(&a), "{kind} m/{chain}/{index}");
            assert_eq!(a.key.pubkey_at(chain, index).unwrap(), first);
            assert_eq!(clone.pubkey_at(chain, index).unwrap(), first);
            let other = b.key.pubkey_at(chain, index).unwrap();
            assert_eq!(other, want(&b));
            assert_ne!(other, first);
        }
        assert!(
            a.key.pubkey_at(0, 1 << 31).is_err(),
            "a hardened index is refused"
        );
    }
}

/// `owns_at` answers the same from its lookup table (built) as by derivation (not
/// built yet): right path, wrong index, wrong chain, another key's script, beyond
/// the lookahead, at its edge.
#[test]
fn owns_at_gives_the_same_answer_from_the_lookup_table_as_by_derivation() {
    for kind in [KeyKind::Ecdsa, KeyKind::Taproot] {
        let tk = test_key(kind, 23);
        let other = test_key(kind, 24);
        let gap = tk.key.gap();
        let at = |chain, index| ScriptPath { chain, index };
        let cases = [
            (tk.key.receive_script(3).unwrap(), at(0, 3), true),
            (tk.key.change_script(7).unwrap(), at(1, 7), true),
            (tk.key.receive_script(3).unwrap(), at(0, 4), false),
            (tk.key.receive_script(3).unwrap(), at(1, 3), false),
            (tk.key.receive_script(3).unwrap(), at(2, 3), false),
            (other.key.receive_script(3).unwrap(), at(0, 3), false),
            (
                tk.key.receive_script(gap - 1).unwrap(),
                at(0, gap - 1),
                true,
            ),
            (tk.key.receive_script(gap).unwrap(), at(0, gap), true),
            (
                tk.key.receive_script(gap + 9).unwrap(),
                at(0, gap + 9),
                true,
            ),
            (tk.key.receive_script(gap + 9).unwrap(), at(0, 9), false),
            (
                tk.key.receive_script(gap + 9).unwrap(),
                at(0, gap + 8),
                false,
            ),
            (
                other.key.receive_script(gap + 9).unwrap(),
                at(0, gap + 9),
                false,
            ),
        ];
        let cold: Vec<bool> = cases
            .iter()
            .map(|(s, p, _)| tk.key.owns_at(s, *p))
            .collect();
        tk.key.warm_lookup();
        let warm: Vec<bool> = cases
            .iter()
            .map(|(s, p, _)| tk.key.owns_at(s, *p))
            .collect();
        // Asked again, beyond the lookahead the answer comes from the remembered
        // derivation; a clone shares what was remembered.
        let clone = tk.key.clone();
        let again: Vec<bool> = cases.iter().map(|(s, p, _)| clone.owns_at(s, *p)).collect();
        let expected: Vec<bool> = cases.iter().map(|c| c.2).collect();
        assert_eq!(cold, expected, "{kind} by derivation");
        assert_eq!(warm, expected, "{kind} from the table");
        assert_eq!(again, expected, "{kind} remembered");
    }
}

// ---------------------------------------------------------------- bdk round trips

fn bdk_round_trip(kind: KeyKind, values: &[u64], amount: u64, expect_inputs: usize) {
    let tk = test_key(kind, 11);
    let mut w = funded_bdk(&tk, values);
    let psbt = bdk_psbt(&mut w, amount);
    let bdk_fee = psbt.fee().unwrap().to_sat();
    let limits = if kind == KeyKind::Ecdsa {
        strict()
    } else {
        IntakeLimits::default()
    };

    let v = intake_psbt(&b64(&psbt), std::slice::from_ref(&tk.key), &limits).unwrap();
    assert_eq!(v.key_id, tk.key.key_id());
    assert_eq!(v.inputs.len(), expect_inputs);
    assert_eq!(v.fee_sats, bdk_fee);
    assert_eq!(v.txid, psbt.unsigned_tx.compute_txid());
    assert_eq!(v.view.fee_sats, bdk_fee);
    assert_eq!(v.view.inputs.len(), expect_inputs);
    // the peer's recomputation agrees
    let again: Vec<[u8; 32]> = recompute_sighashes(&v.psbt)
        .unwrap()
        .iter()
        .map(InputSighash::digest)
        .collect();
    assert_eq!(again, v.sighashes());
    for inp in &v.inputs {
        assert_eq!(inp.chain, 0, "bdk funded receive addresses");
        assert_eq!(inp.pubkey, tk.key.pubkey_at(inp.chain, inp.index).unwrap());
        if kind == KeyKind::Ecdsa {
            // independent BIP-143 computation by the bitcoin crate
            let utxo = v.psbt.inputs[inp.input].witness_utxo.clone().unwrap();
            let h = SighashCache::new(&v.psbt.unsigned_tx)
                .p2wpkh_signature_hash(
                    inp.input,
                    &utxo.script_pubkey,
                    utxo.value,
                    EcdsaSighashType::All,
                )
                .unwrap();
            assert_eq!(inp.digest(), h.to_byte_array());
            assert_eq!(inp.ecdsa_message().unwrap().sighash(), inp.digest());
        } else {
            assert!(inp.ecdsa_message().is_none());
        }
    }
    // BDK put change on its internal chain: the view must call it kept
    let change: Vec<_> = v.view.outputs.iter().filter(|o| o.is_kept()).collect();
    assert_eq!(change.len(), 1);
    assert_eq!(change[0].descriptors, vec![tk.key.descriptor()]);
    let sent: Vec<_> = v.view.outputs.iter().filter(|o| !o.is_kept()).collect();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].amount_sats, amount);
    assert_eq!(sent[0].address.as_deref(), Some(FOREIGN_ADDR));

    let filled = sign_all(&tk, &v);
    let tx = finalize_and_verify(filled.clone()).unwrap();
    assert_eq!(tx.compute_txid(), v.txid);
    // the estimate is an upper bound, at most 1 vB per input above the real size
    let real = tx.weight().to_vbytes_ceil();
    assert!(v.vsize_vb >= real && v.vsize_vb <= real + expect_inputs as u64);

    // BDK finalizes the same filled PSBT to the same transaction
    let mut for_bdk = filled;
    assert!(w
        .finalize_psbt(&mut for_bdk, SignOptions::default())
        .unwrap());
    let bdk_tx = for_bdk.extract_tx().unwrap();
    assert_eq!(bdk_tx.compute_wtxid(), tx.compute_wtxid());
    verify_consensus(&bdk_tx, &v.spent_outputs()).unwrap();
}

#[test]
fn bdk_ecdsa_single_input_psbt_signs_and_passes_consensus() {
    bdk_round_trip(KeyKind::Ecdsa, &[100_000], 40_000, 1);
}

#[test]
fn bdk_ecdsa_multi_input_psbt_signs_and_passes_consensus() {
    bdk_round_trip(KeyKind::Ecdsa, &[30_000, 40_000, 50_000], 100_000, 3);
}

#[test]
fn bdk_taproot_single_input_psbt_signs_and_passes_consensus() {
    bdk_round_trip(KeyKind::Taproot, &[100_000], 40_000, 1);
}

#[test]
fn bdk_taproot_multi_input_psbt_signs_and_passes_consensus() {
    bdk_round_trip(KeyKind::Taproot, &[30_000, 40_000, 50_000], 100_000, 3);
}

fn validated(kind: KeyKind, values: &[u64], amount: u64) -> (TestKey, ValidatedPsbt) {
    let tk = test_key(kind, 21);
    let mut w = funded_bdk(&tk, values);
    let psbt = bdk_psbt(&mut w, amount);
    let v = validate_psbt(
        psbt,
        std::slice::from_ref(&tk.key),
        &IntakeLimits::default(),
    )
    .unwrap();
    (tk, v)
}

// ---------------------------------------------------------------- completion failures

#[test]
fn wrong_or_tampered_signatures_are_refused_before_filling() {
    let (tk, v) = validated(KeyKind::Ecdsa, &[100_000], 10_000);
    let inp = &v.inputs[0];
    let sk = child(&tk, &inp.path);
    let mut psbt = v.psbt.clone();
    // signature over another message
    let bad = secp().sign_ecdsa(&Message::from_digest([7; 32]), &sk);
    assert_eq!(
        code(fill_ecdsa_signature(&mut psbt, 0, inp.pubkey, bad)),
        "signature_invalid"
    );
    // good signature, wrong key
    let other = child(&tk, &[0, 5]).public_key(secp());
    let good = secp().sign_ecdsa(&Message::from_digest(inp.digest()), &sk);
    assert_eq!(
        code(fill_ecdsa_signature(&mut psbt, 0, other, good)),
        "key_mismatch"
    );
    // high-s form of a good signature is refused (libsecp256k1 wants low-s)
    let mut compact = good.serialize_compact();
    let neg_s = bitcoin::secp256k1::SecretKey::from_slice(&compact[32..])
        .unwrap()
        .negate();
    compact[32..].copy_from_slice(&neg_s.secret_bytes());
    let high_s = bitcoin::secp256k1::ecdsa::Signature::from_compact(&compact).unwrap();
    assert_eq!(
        code(fill_ecdsa_signature(&mut psbt, 0, inp.pubkey, high_s)),
        "signature_invalid"
    );
    assert_eq!(
        code(fill_ecdsa_signature(&mut psbt, 9, inp.pubkey, good)),
        "no_such_input"
    );
    assert!(psbt.inputs[0].partial_sigs.is_empty(), "nothing was filled");
    fill_ecdsa_signature(&mut psbt, 0, inp.pubkey, good).unwrap();
    assert_eq!(psbt.inputs[0].partial_sigs.len(), 1);

    let (tk, v) = validated(KeyKind::Taproot, &[100_000], 10_000);
    let inp = &v.inputs[0];
    let sk = child(&tk, &inp.path);
    let msg = Message::from_digest(inp.digest());
    let mut psbt = v.psbt.clone();
    // signed with the untweaked key: not the output key
    let untweaked = secp().sign_schnorr_no_aux_rand(&msg, &Keypair::from_secret_key(secp(), &sk));
    assert_eq!(
        code(fill_taproot_signature(&mut psbt, 0, untweaked)),
        "signature_invalid"
    );
    let kp = Keypair::from_secret_key(secp(), &sk).tap_tweak(secp(), None);
    let good = secp().sign_schnorr_no_aux_rand(&msg, &kp.to_keypair());
    let mut bytes = good.serialize();
    bytes[10] ^= 1;
    let tampered = bitcoin::secp256k1::schnorr::Signature::from_slice(&bytes).unwrap();
    assert_eq!(
        code(fill_taproot_signature(&mut psbt, 0, tampered)),
        "signature_invalid"
    );
    assert!(psbt.inputs[0].tap_key_sig.is_none());
    fill_taproot_signature(&mut psbt, 0, good).unwrap();
    assert!(psbt.inputs[0].tap_key_sig.is_some());
}

#[test]
fn consensus_refuses_modified_outputs_wrong_sighashes_and_zero_taproot_signatures() {
    for kind in [KeyKind::Ecdsa, KeyKind::Taproot] {
        let (tk, v) = validated(kind, &[60_000, 70_000], 100_000);
        let spent = v.spent_outputs();
        let tx = finalize_and_verify(sign_all(&tk, &v)).unwrap();

        // an output changed after signing
        let mut t = tx.clone();
        t.output[0].value = Amount::from_sat(t.output[0].value.to_sat() - 1);
        assert_eq!(code(verify_consensus(&t, &spent)), "consensus_failed");

        // a spent amount that differs from what was signed
        let mut s = spent.clone();
        s[1].value = Amount::from_sat(s[1].value.to_sat() + 1);
        assert_eq!(code(verify_consensus(&tx, &s)), "consensus_failed");

        // a signature over the wrong sighash, smuggled past the fill checks
        let mut psbt = v.psbt.clone();
        let sk = child(&tk, &v.inputs[0].path);
        let wrong = Message::from_digest([0x42; 32]);
        match kind {
            KeyKind::Ecdsa => {
                psbt.inputs[0].partial_sigs.insert(
                    bitcoin::PublicKey::new(v.inputs[0].pubkey),
                    bitcoin::ecdsa::Signature::sighash_all(secp().sign_ecdsa(&wrong, &sk)),
                );
            }
            KeyKind::Taproot => {
                let kp = Keypair::from_secret_key(secp(), &sk).tap_tweak(secp(), None);
                psbt.inputs[0].tap_key_sig = Some(bitcoin::taproot::Signature {
                    signature: secp().sign_schnorr_no_aux_rand(&wrong, &kp.to_keypair()),
                    sighash_type: bitcoin::TapSighashType::Default,
                });
            }
        }
        let mut rest = sign_all(&tk, &v);
        rest.inputs[0] = psbt.inputs[0].clone();
        let e = finalize_and_verify(rest).unwrap_err();
        assert_eq!(
            e,
            WalletError::ConsensusFailed {
                input: 0,
                reason: "script evaluation failed".into()
            }
        );
        assert!(!e.is_client_error());

        if kind == KeyKind::Taproot {
            // an all-zero signature: passes libbitcoinconsensus 0.105 without spent
            // outputs, must fail here
            let mut t = tx.clone();
            t.input[1].witness = Witness::from_slice(&[vec![0u8; 64]]);
            let e = verify_consensus(&t, &spent).unwrap_err();
            assert_eq!(e.code(), "consensus_failed");
            assert!(e.to_string().contains("input 1"));
        }
        assert_eq!(code(verify_consensus(&tx, &spent[..1])), "internal");
    }
}

// ---------------------------------------------------------------- intake refusals

#[test]
fn foreign_and_mixed_inputs_are_refused() {
    let ours = test_key(KeyKind::Ecdsa, 31);
    let theirs = test_key(KeyKind::Ecdsa, 32);
    let mut w = funded_bdk(&theirs, &[100_000]);
    let foreign = bdk_psbt(&mut w, 10_000);
    // foreign fingerprint, foreign script
    let e = validate_psbt(
        foreign.clone(),
        std::slice::from_ref(&ours.key),
        &IntakeLimits::default(),
    )
    .unwrap_err();
    assert_eq!(e.code(), "input_not_ours");
    assert!(e.to_string().contains("input 0"));

    // a PSBT with one input of each of two wallet keys
    let mut w2 = funded_bdk(&ours, &[100_000]);
    let mut mixed = bdk_psbt(&mut w2, 10_000);
    mixed
        .unsigned_tx
        .input
        .push(foreign.unsigned_tx.input[0].clone());
    mixed.inputs.push(foreign.inputs[0].clone());
    let both = [ours.key.clone(), theirs.key.clone()];
    assert_eq!(
        code(validate_psbt(
            mixed.clone(),
            &both,
            &IntakeLimits::default()
        )),
        "mixed_keys"
    );
    // with only our key known, the second input is simply not ours
    assert_eq!(
        code(validate_psbt(
            mixed,
            std::slice::from_ref(&ours.key),
            &IntakeLimits::default()
        )),
        "input_not_ours"
    );
    // a taproot key does not claim p2wpkh scripts of the same xpub
    let tr_same = WalletKey::new("tr", KeyKind::Taproot, *ours.key.xpub(), NET);
    let psbt = bdk_psbt(&mut funded_bdk(&ours, &[50_000]), 10_000);
    assert_eq!(
        code(validate_psbt(psbt, &[tr_same], &IntakeLimits::default())),
        "input_not_ours"
    );
}

#[test]
fn key_origins_must_match_the_derived_key() {
    let tk = test_key(KeyKind::Ecdsa, 41);
    let mut w = funded_bdk(&tk, &[100_000]);
    let psbt = bdk_psbt(&mut w, 10_000);
    let keys = std::slice::from_ref(&tk.key);
    let lim = IntakeLimits::default();

    // wrong index in the origin
    let mut p = psbt.clone();
    for (_, (_, path)) in p.inputs[0].bip32_derivation.iter_mut() {
        *path = DerivationPath::from_str("m/0/3").unwrap();
    }
    assert_eq!(code(validate_psbt(p, keys, &lim)), "derivation_mismatch");

    // origin removed: refused by default, accepted (found by lookahead) if allowed
    let mut p = psbt.clone();
    p.inputs[0].bip32_derivation.clear();
    assert_eq!(
        code(validate_psbt(p.clone(), keys, &lim)),
        "derivation_mismatch"
    );
    let lax = IntakeLimits {
        require_key_origin: false,
        ..lim.clone()
    };
    assert_eq!(validate_psbt(p, keys, &lax).unwrap().inputs[0].index, 0);

    // an extra origin entry for a foreign key
    let mut p = psbt.clone();
    let foreign = child(&test_key(KeyKind::Ecdsa, 42), &[0, 0]).public_key(secp());
    let fp = bitcoin::bip32::Fingerprint::from([1, 2, 3, 4]);
    p.inputs[0]
        .bip32_derivation
        .insert(foreign, (fp, DerivationPath::from_str("m/0/0").unwrap()));
    assert_eq!(code(validate_psbt(p, keys, &lim)), "derivation_mismatch");

    // a change output whose origin names us but a different index
    let mut p = psbt.clone();
    let j = p
        .outputs
        .iter()
        .position(|o| !o.bip32_derivation.is_empty())
        .unwrap();
    for (_, (_, path)) in p.outputs[j].bip32_derivation.iter_mut() {
        *path = DerivationPath::from_str("m/1/7").unwrap();
    }
    assert_eq!(code(validate_psbt(p, keys, &lim)), "derivation_mismatch");

    // taproot: tap_internal_key that is not ours
    let tr = test_key(KeyKind::Taproot, 43);
    let mut p = bdk_psbt(&mut funded_bdk(&tr, &[100_000]), 10_000);
    p.inputs[0].tap_internal_key = Some(foreign.x_only_public_key().0);
    assert_eq!(
        code(validate_psbt(p, std::slice::from_ref(&tr.key), &lim)),
        "derivation_mismatch"
    );
}

#[test]
fn utxo_data_must_be_present_and_consistent() {
    let tk = test_key(KeyKind::Ecdsa, 51);
    let mut w = funded_bdk(&tk, &[100_000]);
    let psbt = bdk_psbt(&mut w, 10_000);
    let keys = std::slice::from_ref(&tk.key);
    assert!(psbt.inputs[0].non_witness_utxo.is_some(), "bdk fills it");
    validate_psbt(psbt.clone(), keys, &strict()).unwrap();

    let mut p = psbt.clone();
    p.inputs[0].witness_utxo = None;
    assert_eq!(code(validate_psbt(p, keys, &strict())), "missing_utxo");

    let mut p = psbt.clone();
    p.inputs[0].non_witness_utxo = None;
    assert_eq!(
        code(validate_psbt(p.clone(), keys, &strict())),
        "missing_utxo"
    );
    validate_psbt(p, keys, &IntakeLimits::default()).unwrap();

    // witness_utxo lying about the amount (the fee-overpayment attack)
    let mut p = psbt.clone();
    if let Some(u) = p.inputs[0].witness_utxo.as_mut() {
        u.value = Amount::from_sat(u.value.to_sat() + 50_000);
    }
    assert_eq!(code(validate_psbt(p, keys, &strict())), "utxo_mismatch");

    // non_witness_utxo of another transaction
    let mut p = psbt.clone();
    if let Some(t) = p.inputs[0].non_witness_utxo.as_mut() {
        t.lock_time = absolute::LockTime::from_consensus(5);
    }
    assert_eq!(code(validate_psbt(p, keys, &strict())), "utxo_mismatch");
}

#[test]
fn sighash_types_other_than_all_and_signed_inputs_are_refused() {
    let (tk, v) = validated(KeyKind::Ecdsa, &[100_000], 10_000);
    let keys = std::slice::from_ref(&tk.key);
    let lim = IntakeLimits::default();
    let mut p = v.psbt.clone();
    p.inputs[0].sighash_type = Some(PsbtSighashType::from(EcdsaSighashType::None));
    assert_eq!(code(validate_psbt(p, keys, &lim)), "unsupported_sighash");
    let mut p = v.psbt.clone();
    p.inputs[0].sighash_type = Some(PsbtSighashType::from(EcdsaSighashType::All));
    validate_psbt(p, keys, &lim).unwrap();

    let signed = sign_all(&tk, &v);
    assert_eq!(
        code(validate_psbt(signed, keys, &lim)),
        "input_already_signed"
    );

    // taproot: SINGLE refused, explicit ALL accepted and signed with a 65-byte sig
    let (tk, v) = validated(KeyKind::Taproot, &[100_000], 10_000);
    let keys = std::slice::from_ref(&tk.key);
    let mut p = v.psbt.clone();
    p.inputs[0].sighash_type = Some(PsbtSighashType::from(bitcoin::TapSighashType::Single));
    assert_eq!(code(validate_psbt(p, keys, &lim)), "unsupported_sighash");
    let mut p = v.psbt.clone();
    p.inputs[0].sighash_type = Some(PsbtSighashType::from(bitcoin::TapSighashType::All));
    let v_all = validate_psbt(p, keys, &lim).unwrap();
    assert_eq!(v_all.vsize_vb, v.vsize_vb + 1);
    assert_ne!(v_all.sighashes(), v.sighashes());
    let tx = finalize_and_verify(sign_all(&tk, &v_all)).unwrap();
    assert_eq!(tx.input[0].witness.nth(0).unwrap().len(), 65);
}

/// A PSBT built by hand spending `values` at receive indexes 0.. of `tk`.
fn manual_psbt(tk: &TestKey, values: &[u64], outputs: Vec<TxOut>) -> Psbt {
    let utxos: Vec<OwnedUtxo> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let tx = funding_tx(tk.key.receive_script(i as u32).unwrap(), *v, 100 + i as u8);
            scan_funding_tx(
                &bitcoin::consensus::serialize(&tx),
                std::slice::from_ref(&tk.key),
                &IntakeLimits::default(),
            )
            .unwrap()
            .remove(0)
        })
        .collect();
    let total: u64 = values.iter().sum();
    let mut v = build_psbt(
        &tk.key,
        &utxos,
        FOREIGN_ADDR,
        total - 20_000,
        1,
        0,
        &IntakeLimits::default(),
    )
    .unwrap();
    assert_eq!(v.inputs.len(), values.len());
    v.psbt.unsigned_tx.output = outputs;
    v.psbt.outputs = vec![Default::default(); v.psbt.unsigned_tx.output.len()];
    v.psbt
}

fn pay(addr: &str, sats: u64) -> TxOut {
    TxOut {
        value: Amount::from_sat(sats),
        script_pubkey: parse_address(addr, NET).unwrap().script_pubkey(),
    }
}

#[test]
fn outputs_are_checked_for_dust_amounts_and_fees() {
    let tk = test_key(KeyKind::Taproot, 61);
    let keys = std::slice::from_ref(&tk.key);
    let lim = IntakeLimits::default();
    let check = |outs: Vec<TxOut>, lim: &IntakeLimits| {
        validate_psbt(manual_psbt(&tk, &[50_000, 60_000], outs), keys, lim)
    };
    validate_psbt(
        manual_psbt(&tk, &[50_000, 60_000], vec![pay(FOREIGN_ADDR, 109_000)]),
        keys,
        &lim,
    )
    .unwrap();
    // p2wpkh dust threshold is 294
    let e = check(
        vec![pay(FOREIGN_ADDR, 100_000), pay(FOREIGN_ADDR, 293)],
        &lim,
    )
    .unwrap_err();
    assert_eq!(e.code(), "dust_output");
    assert!(e.to_string().contains("output 1"));
    check(
        vec![pay(FOREIGN_ADDR, 100_000), pay(FOREIGN_ADDR, 294)],
        &lim,
    )
    .unwrap();
    // op_return carries no value and is not dust
    let op_return = TxOut {
        value: Amount::ZERO,
        script_pubkey: ScriptBuf::new_op_return([1u8; 8]),
    };
    check(vec![pay(FOREIGN_ADDR, 100_000), op_return], &lim).unwrap();
    assert_eq!(
        code(check(vec![pay(FOREIGN_ADDR, 110_001)], &lim)),
        "outputs_exceed_inputs"
    );
    assert_eq!(
        code(check(vec![pay(FOREIGN_ADDR, MAX_MONEY_SATS + 1)], &lim)),
        "amount_out_of_range"
    );
    assert_eq!(
        code(check(
            vec![
                pay(FOREIGN_ADDR, MAX_MONEY_SATS),
                pay(FOREIGN_ADDR, MAX_MONEY_SATS)
            ],
            &lim
        )),
        "amount_out_of_range"
    );
    // fee 60 000 sats on ~150 vB: above 1000 sat/vB? no (400 sat/vB), but above a 100 cap
    let cap_rate = IntakeLimits {
        max_fee_rate_sat_vb: 100,
        ..lim.clone()
    };
    assert_eq!(
        code(check(vec![pay(FOREIGN_ADDR, 50_000)], &cap_rate)),
        "fee_too_high"
    );
    let cap_abs = IntakeLimits {
        max_fee_sats: 10_000,
        ..lim.clone()
    };
    assert_eq!(
        code(check(vec![pay(FOREIGN_ADDR, 90_000)], &cap_abs)),
        "fee_too_high"
    );
    assert_eq!(code(check(vec![], &lim)), "psbt_invalid");
    let few = IntakeLimits {
        max_inputs: 1,
        ..lim.clone()
    };
    assert_eq!(
        code(check(vec![pay(FOREIGN_ADDR, 100_000)], &few)),
        "psbt_invalid"
    );
    // the same outpoint twice
    let mut p = manual_psbt(&tk, &[50_000], vec![pay(FOREIGN_ADDR, 40_000)]);
    p.unsigned_tx.input.push(p.unsigned_tx.input[0].clone());
    p.inputs.push(p.inputs[0].clone());
    assert_eq!(code(validate_psbt(p, keys, &lim)), "psbt_invalid");
}

#[test]
fn malformed_and_oversized_psbts_get_their_codes() {
    let (tk, v) = validated(KeyKind::Ecdsa, &[100_000], 10_000);
    let keys = std::slice::from_ref(&tk.key);
    let lim = IntakeLimits::default();
    let bin = v.psbt.serialize();
    // binary and base64 (with whitespace) both decode
    intake_psbt(&bin, keys, &lim).unwrap();
    let mut text = b64(&v.psbt);
    text.push(b'\n');
    intake_psbt(&text, keys, &lim).unwrap();

    assert_eq!(
        code(intake_psbt(b"not a psbt", keys, &lim)),
        "psbt_malformed"
    );
    assert_eq!(code(intake_psbt(b"", keys, &lim)), "psbt_malformed");
    assert_eq!(
        code(intake_psbt(b"'; DROP TABLE transactions; --", keys, &lim)),
        "psbt_malformed"
    );
    let mut trailing = bin.clone();
    trailing.push(0);
    assert_eq!(code(intake_psbt(&trailing, keys, &lim)), "psbt_malformed");
    assert_eq!(
        code(intake_psbt(&bin[..bin.len() - 3], keys, &lim)),
        "psbt_malformed"
    );
    let small = IntakeLimits {
        max_psbt_bytes: bin.len() - 1,
        ..lim.clone()
    };
    assert_eq!(code(intake_psbt(&bin, keys, &small)), "psbt_too_large");
    assert_eq!(
        code(intake_psbt(&b64(&v.psbt), keys, &small)),
        "psbt_too_large"
    );
    let huge = vec![b'A'; 2 * 1024 * 1024];
    assert_eq!(code(intake_psbt(&huge, keys, &lim)), "psbt_too_large");
}

// ---------------------------------------------------------------- recipient form

fn imported(tk: &TestKey, values: &[u64]) -> Vec<OwnedUtxo> {
    values
        .iter()
        .enumerate()
        .flat_map(|(i, v)| {
            let tx = funding_tx(tk.key.receive_script(i as u32).unwrap(), *v, 200 + i as u8);
            let hex = bitcoin::consensus::encode::serialize_hex(&tx);
            scan_funding_tx(
                hex.as_bytes(),
                std::slice::from_ref(&tk.key),
                &IntakeLimits::default(),
            )
            .unwrap()
        })
        .collect()
}

#[test]
fn recipient_form_builds_signs_and_returns_change() {
    for kind in [KeyKind::Ecdsa, KeyKind::Taproot] {
        let tk = test_key(kind, 71);
        let utxos = imported(&tk, &[20_000, 80_000, 50_000]);
        let v = build_psbt(
            &tk.key,
            &utxos,
            FOREIGN_ADDR,
            100_000,
            5,
            3,
            &IntakeLimits::default(),
        )
        .unwrap();
        // largest first: 80k + 50k cover 100k + fee
        let spent: Vec<u64> = v.inputs.iter().map(|i| i.amount_sats).collect();
        assert_eq!(spent, vec![80_000, 50_000]);
        let tx = &v.psbt.unsigned_tx;
        assert_eq!(tx.output.len(), 2);
        assert_eq!(tx.output[0].value.to_sat(), 100_000);
        assert_eq!(
            tx.output[1].script_pubkey,
            tk.key.change_script(3).unwrap(),
            "change at m/1/3"
        );
        assert_eq!(v.fee_sats, 5 * v.vsize_vb);
        assert_eq!(130_000 - 100_000 - v.fee_sats, tx.output[1].value.to_sat());
        assert!(v.view.outputs[1].is_kept());
        assert!(!v.view.outputs[0].is_kept());

        // an external wallet recognises inputs and change, and reads the same PSBT
        let mut w = bdk_wallet(&tk);
        assert!(w.is_mine(tx.output[1].script_pubkey.clone()));
        let again = intake_psbt(
            v.to_base64().as_bytes(),
            std::slice::from_ref(&tk.key),
            &IntakeLimits::default(),
        )
        .unwrap();
        assert_eq!(again.sighashes(), v.sighashes());

        let filled = sign_all(&tk, &v);
        let signed = finalize_and_verify(filled.clone()).unwrap();
        assert_eq!(signed.compute_txid(), v.txid);
        for (i, u) in v.inputs.iter().enumerate() {
            let out = utxos.iter().find(|x| x.outpoint == u.outpoint).unwrap();
            let funding = funding_tx(
                out.script_pubkey.clone(),
                out.value_sats,
                200 + out.index as u8,
            );
            fund_bdk(&mut w, funding, 50 + i as u32);
        }
        let mut for_bdk = filled;
        assert!(w
            .finalize_psbt(&mut for_bdk, SignOptions::default())
            .unwrap());
        assert_eq!(
            for_bdk.extract_tx().unwrap().compute_wtxid(),
            signed.compute_wtxid()
        );
    }
}

#[test]
fn change_below_dust_goes_to_the_fee() {
    let tk = test_key(KeyKind::Ecdsa, 72);
    let utxos = imported(&tk, &[10_000]);
    // 10 000 - 9 700 = 300 left; at 1 sat/vB the change output would be dust
    let v = build_psbt(
        &tk.key,
        &utxos,
        FOREIGN_ADDR,
        9_700,
        1,
        0,
        &IntakeLimits::default(),
    )
    .unwrap();
    assert_eq!(v.psbt.unsigned_tx.output.len(), 1);
    assert_eq!(v.fee_sats, 300);
    finalize_and_verify(sign_all(&tk, &v)).unwrap();
}

#[test]
fn recipient_form_refuses_bad_requests_with_codes() {
    let tk = test_key(KeyKind::Taproot, 73);
    let other = test_key(KeyKind::Taproot, 74);
    let utxos = imported(&tk, &[50_000]);
    let lim = IntakeLimits::default();
    let b = |addr: &str, amount: u64, rate: u64| {
        build_psbt(&tk.key, &utxos, addr, amount, rate, 0, &lim)
    };
    assert_eq!(
        code(b("bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq", 10_000, 2)),
        "address_wrong_network"
    );
    assert_eq!(
        code(b("tb1qw508d6qejxtdg4y5r3zarvary0c5xw7kxpjzsx", 10_000, 2)),
        "address_wrong_network"
    );
    assert_eq!(code(b("bcrt1qnotanaddress", 10_000, 2)), "address_invalid");
    assert_eq!(
        code(b("'; DROP TABLE utxos; --", 10_000, 2)),
        "address_invalid"
    );
    assert_eq!(code(b(&"x".repeat(10_000), 10_000, 2)), "address_invalid");
    assert_eq!(code(b(FOREIGN_ADDR, 0, 2)), "amount_out_of_range");
    assert_eq!(code(b(FOREIGN_ADDR, u64::MAX, 2)), "amount_out_of_range");
    assert_eq!(
        code(b(FOREIGN_ADDR, MAX_MONEY_SATS + 1, 2)),
        "amount_out_of_range"
    );
    assert_eq!(code(b(FOREIGN_ADDR, 100, 2)), "dust_output");
    assert_eq!(code(b(FOREIGN_ADDR, 10_000, 0)), "fee_rate_out_of_range");
    assert_eq!(
        code(b(FOREIGN_ADDR, 10_000, 5_000)),
        "fee_rate_out_of_range"
    );
    assert_eq!(code(b(FOREIGN_ADDR, 50_000, 2)), "insufficient_funds");
    assert_eq!(
        code(b(FOREIGN_ADDR, MAX_MONEY_SATS, 2)),
        "insufficient_funds"
    );
    // a utxo of another key, or listed twice
    let mut mixed = utxos.clone();
    mixed.extend(imported(&other, &[50_000]));
    assert_eq!(
        code(build_psbt(
            &tk.key,
            &mixed,
            FOREIGN_ADDR,
            10_000,
            2,
            0,
            &lim
        )),
        "utxo_invalid"
    );
    let twice = [utxos[0].clone(), utxos[0].clone()];
    assert_eq!(
        code(build_psbt(
            &tk.key,
            &twice,
            FOREIGN_ADDR,
            10_000,
            2,
            0,
            &lim
        )),
        "utxo_invalid"
    );
    let mut lying = utxos.clone();
    lying[0].index = 1;
    assert_eq!(
        code(build_psbt(
            &tk.key,
            &lying,
            FOREIGN_ADDR,
            10_000,
            2,
            0,
            &lim
        )),
        "utxo_invalid"
    );
}

// ---------------------------------------------------------------- utxo import

#[test]
fn scan_funding_tx_keeps_only_our_outputs() {
    let a = test_key(KeyKind::Ecdsa, 81);
    let b = test_key(KeyKind::Taproot, 82);
    let keys = [a.key.clone(), b.key.clone()];
    let tx = Transaction {
        output: vec![
            pay(FOREIGN_ADDR, 1_000),
            TxOut {
                value: Amount::from_sat(2_000),
                script_pubkey: a.key.receive_script(3).unwrap(),
            },
            TxOut {
                value: Amount::from_sat(3_000),
                script_pubkey: b.key.change_script(0).unwrap(),
            },
            // a's key in taproot form is not a's script
            TxOut {
                value: Amount::from_sat(4_000),
                script_pubkey: ScriptBuf::new_p2tr(
                    secp(),
                    a.key.internal_key_at(0, 0).unwrap(),
                    None,
                ),
            },
        ],
        ..funding_tx(ScriptBuf::new(), 0, 9)
    };
    let txid = tx.compute_txid();
    let lim = IntakeLimits::default();
    let found = scan_funding_tx(&bitcoin::consensus::serialize(&tx), &keys, &lim).unwrap();
    assert_eq!(
        found,
        vec![
            OwnedUtxo {
                key_id: a.key.key_id().into(),
                outpoint: OutPoint { txid, vout: 1 },
                value_sats: 2_000,
                script_pubkey: a.key.receive_script(3).unwrap(),
                chain: 0,
                index: 3,
            },
            OwnedUtxo {
                key_id: b.key.key_id().into(),
                outpoint: OutPoint { txid, vout: 2 },
                value_sats: 3_000,
                script_pubkey: b.key.change_script(0).unwrap(),
                chain: 1,
                index: 0,
            },
        ]
    );
    let hex = format!("  {}\n", bitcoin::consensus::encode::serialize_hex(&tx));
    assert_eq!(scan_funding_tx(hex.as_bytes(), &keys, &lim).unwrap(), found);
    assert!(
        scan_funding_tx(&bitcoin::consensus::serialize(&tx), &[], &lim)
            .unwrap()
            .is_empty()
    );

    assert_eq!(code(scan_funding_tx(b"zz", &keys, &lim)), "tx_malformed");
    assert_eq!(code(scan_funding_tx(b"abc", &keys, &lim)), "tx_malformed");
    assert_eq!(code(scan_funding_tx(b"", &keys, &lim)), "tx_malformed");
    let small = IntakeLimits {
        max_tx_bytes: 10,
        ..lim.clone()
    };
    assert_eq!(
        code(scan_funding_tx(hex.as_bytes(), &keys, &small)),
        "tx_too_large"
    );
    assert_eq!(
        code(scan_funding_tx(
            &bitcoin::consensus::serialize(&tx),
            &keys,
            &small
        )),
        "tx_too_large"
    );
}

// ---------------------------------------------------------------- errors

#[test]
fn error_codes_are_snake_case_and_messages_lower_case() {
    let samples = [
        WalletError::PsbtTooLarge { size: 2, limit: 1 },
        WalletError::PsbtMalformed("x".into()),
        WalletError::InputNotOurs {
            input: 0,
            reason: "x".into(),
        },
        WalletError::MissingUtxo {
            input: 0,
            what: "witness_utxo",
        },
        WalletError::MixedKeys {
            first: "a".into(),
            second: "b".into(),
        },
        WalletError::DustOutput {
            location: "output 0".into(),
            amount_sats: 1,
            threshold_sats: 2,
        },
        WalletError::FeeTooHigh {
            fee_sats: 1,
            vsize_vb: 1,
            reason: "x".into(),
        },
        WalletError::AddressWrongNetwork {
            address: "a".into(),
            network: "regtest".into(),
        },
        WalletError::InsufficientFunds {
            needed_sats: 1,
            available_sats: 0,
            utxos: 0,
        },
        WalletError::UnsupportedSighash {
            input: 0,
            sighash_type: 2,
        },
        WalletError::SignatureInvalid { input: 0 },
        WalletError::ConsensusFailed {
            input: 0,
            reason: "x".into(),
        },
    ];
    for e in samples {
        let c = e.code();
        assert!(
            c.chars().all(|ch| ch.is_ascii_lowercase() || ch == '_'),
            "{c}"
        );
        let m = e.to_string();
        assert!(!m.starts_with(|ch: char| ch.is_ascii_uppercase()), "{m}");
    }
}

#[test]
fn wallet_key_debug_is_compact() {
    let tk = test_key(KeyKind::Ecdsa, 91);
    let _ = tk.key.find_path(&ScriptBuf::new());
    let d = format!("{:?}", tk.key);
    assert!(d.contains("ecdsa-91") && d.len() < 300, "{d}");
}

// ---------------------------------------------------------------- decoders never panic

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn psbt_intake_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let keys = [test_key(KeyKind::Ecdsa, 1).key];
        let _ = intake_psbt(&bytes, &keys, &IntakeLimits::default());
        let mut magic = b"psbt\xff".to_vec();
        magic.extend_from_slice(&bytes);
        let _ = intake_psbt(&magic, &keys, &IntakeLimits::default());
    }

    #[test]
    fn psbt_intake_never_panics_on_mutated_psbts(pos in any::<usize>(), byte in any::<u8>(), cut in any::<usize>()) {
        let bin = mutation_base();
        let keys = [mutation_key().key];
        let mut m = bin.clone();
        let i = pos % m.len();
        m[i] = byte;
        let _ = intake_psbt(&m, &keys, &IntakeLimits::default());
        let _ = intake_psbt(&bin[..cut % bin.len()], &keys, &IntakeLimits::default());
    }

    #[test]
    fn funding_tx_scan_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let keys = [test_key(KeyKind::Taproot, 2).key];
        let _ = scan_funding_tx(&bytes, &keys, &IntakeLimits::default());
        let _ = scan_funding_tx(hex::encode(&bytes).as_bytes(), &keys, &IntakeLimits::default());
    }
}

fn mutation_key() -> TestKey {
    test_key(KeyKind::Ecdsa, 99)
}

fn mutation_base() -> Vec<u8> {
    static BASE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    BASE.get_or_init(|| {
        let tk = mutation_key();
        let mut w = funded_bdk(&tk, &[40_000, 50_000]);
        bdk_psbt(&mut w, 60_000).serialize()
    })
    .clone()
}

#[test]
fn lookahead_bounds_scanning_but_key_origins_reach_beyond_it() {
    let xprv = Xpriv::new_master(NetworkKind::Test, &[5; 32]).unwrap();
    let key = WalletKey::new(
        "wide",
        KeyKind::Taproot,
        Xpub::from_priv(secp(), &xprv),
        NET,
    );
    assert_eq!(key.gap(), DEFAULT_GAP);
    assert_eq!(
        key.find_path(&key.change_script(DEFAULT_GAP - 1).unwrap()),
        Some(ScriptPath {
            chain: 1,
            index: DEFAULT_GAP - 1
        })
    );
    let far = key.receive_script(DEFAULT_GAP + 500).unwrap();
    assert_eq!(key.find_path(&far), None);
    assert_eq!(code(key.clone().with_gap(0)), "derivation_invalid");
    assert_eq!(
        code(key.clone().with_gap(MAX_GAP + 1)),
        "derivation_invalid"
    );

    // a utxo beyond the lookahead is not found by scanning a funding transaction...
    let tx = funding_tx(far.clone(), 70_000, 77);
    let lim = IntakeLimits::default();
    let keys = std::slice::from_ref(&key);
    assert!(
        scan_funding_tx(&bitcoin::consensus::serialize(&tx), keys, &lim)
            .unwrap()
            .is_empty()
    );
    // ...but a PSBT whose key origin names its path is confirmed by derivation
    let utxo = OwnedUtxo {
        key_id: "wide".into(),
        outpoint: OutPoint {
            txid: tx.compute_txid(),
            vout: 0,
        },
        value_sats: 70_000,
        script_pubkey: far,
        chain: 0,
        index: DEFAULT_GAP + 500,
    };
    let v = build_psbt(&key, &[utxo], FOREIGN_ADDR, 30_000, 2, 0, &lim).unwrap();
    assert_eq!(v.inputs[0].path, vec![0, DEFAULT_GAP + 500]);
    let tk = TestKey { xprv, key };
    finalize_and_verify(sign_all(&tk, &v)).unwrap();
    // without the origin the input is not recognised
    let mut p = v.psbt.clone();
    p.inputs[0].tap_key_origins.clear();
    p.inputs[0].tap_internal_key = None;
    let lax = IntakeLimits {
        require_key_origin: false,
        ..lim
    };
    assert_eq!(
        code(validate_psbt(p, std::slice::from_ref(&tk.key), &lax)),
        "input_not_ours"
    );
}

// ---------------------------------------------------------------- proven amounts

/// The outputs a PSBT's inputs spend, as a node that imported them knows them.
fn known_of(v: &ValidatedPsbt) -> KnownOutputs {
    v.inputs
        .iter()
        .zip(&v.psbt.inputs)
        .map(|(i, p)| (i.outpoint, p.witness_utxo.clone().unwrap()))
        .collect()
}

#[test]
fn input_amounts_must_be_proven_by_the_previous_transaction_or_an_imported_output() {
    for kind in [KeyKind::Ecdsa, KeyKind::Taproot] {
        let (_, v) = validated(kind, &[30_000, 40_000], 60_000);
        let known = known_of(&v);
        // Imported outputs equal to witness_utxo prove the amounts.
        v.check_input_proofs(&known).unwrap();
        // Without them, only the full previous transaction does (BDK gives it for
        // P2WPKH inputs, not for taproot ones).
        let mut bare = v.clone();
        for inp in &mut bare.psbt.inputs {
            inp.non_witness_utxo = None;
        }
        assert_eq!(
            code(bare.check_input_proofs(&KnownOutputs::new())),
            "unproven_input_amount"
        );
        bare.check_input_proofs(&known).unwrap();
        // An imported output that differs is refused, previous transaction or not.
        let mut lower = known.clone();
        let first = v.inputs[0].outpoint;
        lower.get_mut(&first).unwrap().value = Amount::from_sat(1_000);
        assert_eq!(code(v.check_input_proofs(&lower)), "input_amount_mismatch");
        // The previous transactions can be put back from what the node imported.
        let funding: std::collections::HashMap<Txid, Transaction> = v
            .psbt
            .inputs
            .iter()
            .filter_map(|i| i.non_witness_utxo.clone())
            .map(|t| (t.compute_txid(), t))
            .collect();
        let expected = funding.len();
        if kind == KeyKind::Ecdsa {
            assert_eq!(
                expected, 2,
                "bdk gives p2wpkh inputs their previous transaction"
            );
        }
        let mut again = bare.clone();
        assert_eq!(again.attach_previous_transactions(&funding), expected);
        if expected == 2 {
            again.check_input_proofs(&KnownOutputs::new()).unwrap();
        }
    }
}

#[test]
fn a_lying_witness_utxo_gets_no_previous_transaction_attached() {
    let (_, v) = validated(KeyKind::Ecdsa, &[30_000, 40_000], 60_000);
    let funding: std::collections::HashMap<Txid, Transaction> = v
        .psbt
        .inputs
        .iter()
        .filter_map(|i| i.non_witness_utxo.clone())
        .map(|t| (t.compute_txid(), t))
        .collect();
    let mut lie = v.clone();
    lie.psbt.inputs[0].non_witness_utxo = None;
    lie.psbt.inputs[0].witness_utxo.as_mut().unwrap().value = Amount::from_sat(20_000);
    assert_eq!(lie.attach_previous_transactions(&funding), 0);
    assert_eq!(
        code(lie.check_input_proofs(&KnownOutputs::new())),
        "unproven_input_amount"
    );
}

#[test]
fn approval_data_differs_for_other_amounts_or_sighash_types_of_one_txid() {
    let (tk, v) = validated(KeyKind::Ecdsa, &[30_000, 40_000], 60_000);
    let same = validate_psbt(
        v.psbt.clone(),
        std::slice::from_ref(&tk.key),
        &IntakeLimits::default(),
    )
    .unwrap();
    assert_eq!(v.approval_data_hash(), same.approval_data_hash());
    // The same unsigned transaction claiming another amount for one input.
    let mut psbt = v.psbt.clone();
    psbt.inputs[1].non_witness_utxo = None;
    psbt.inputs[1].witness_utxo.as_mut().unwrap().value = Amount::from_sat(41_000);
    let other = validate_psbt(
        psbt,
        std::slice::from_ref(&tk.key),
        &IntakeLimits::default(),
    )
    .unwrap();
    assert_eq!(other.txid, v.txid);
    assert_ne!(other.approval_data_hash(), v.approval_data_hash());

    let (tk, t) = validated(KeyKind::Taproot, &[30_000], 20_000);
    let mut psbt = t.psbt.clone();
    psbt.inputs[0].sighash_type = Some(bitcoin::TapSighashType::All.into());
    let all = validate_psbt(
        psbt,
        std::slice::from_ref(&tk.key),
        &IntakeLimits::default(),
    )
    .unwrap();
    assert_eq!(all.txid, t.txid);
    assert_ne!(all.approval_data_hash(), t.approval_data_hash());
}
