//! FROST (givre) end to end: keygen and BIP-86 Taproot key-path signing, verified with
//! libsecp256k1 against output keys computed independently with the `bitcoin` crate.

mod common;

use std::sync::Arc;
use std::time::Duration;
use vote::InputPermit;

use bitcoin::bip32::{ChildNumber, DerivationPath};
use bitcoin::key::TapTweak;
use bitcoin::secp256k1::{self, Secp256k1};
use bitcoin::sighash::{Prevouts, SighashCache, TapSighashType};
use bitcoin::{Amount, NetworkKind, ScriptBuf, TxOut};
use bytes::Bytes;
use common::*;
use signer_protocol::frost::{self, FrostKeyShare, FrostKeygenMsg, FrostSignMsg};
use signer_protocol::local::Tamper;
use signer_protocol::{MsgType, ProtocolError, ProtocolKind};

fn keygen_sim(n: u16, t: u16) -> Vec<FrostKeyShare> {
    let eid = eid("frost", ProtocolKind::FrostKeygen, t, n);
    signer_protocol::round_based::sim::run::<FrostKeygenMsg, _>(n, |i, party| async move {
        frost::keygen(party, &eid, i, n, t).await
    })
    .expect("simulation")
    .into_vec()
    .into_iter()
    .map(|r| r.expect("keygen"))
    .collect()
}

async fn keygen_channels(n: u16, t: u16) -> Vec<FrostKeyShare> {
    let eid = eid("frost-chan", ProtocolKind::FrostKeygen, t, n);
    all_ok(
        run_over_channels::<FrostKeygenMsg, _, _, _>(
            ProtocolKind::FrostKeygen,
            n,
            None,
            Duration::from_secs(60),
            move |i, party| async move { frost::keygen(party, &eid, i, n, t).await },
        )
        .await,
    )
}

/// BIP-86 output key computed with the `bitcoin` crate only (xpub → bip-32 child →
/// x-only → tap tweak with no merkle root).
fn bitcoin_output_key(share: &FrostKeyShare, path: &[u32]) -> bitcoin::key::TweakedPublicKey {
    let secp = Secp256k1::verification_only();
    let xpub = share.xpub(NetworkKind::Test).expect("hd key");
    let path: DerivationPath = path
        .iter()
        .map(|&i| ChildNumber::from_normal_idx(i).expect("normal"))
        .collect::<Vec<_>>()
        .into();
    let child = xpub.derive_pub(&secp, &path).expect("derive").public_key;
    child.x_only_public_key().0.tap_tweak(&secp, None).0
}

/// Taproot key-spend sighash of a transaction spending a P2TR output of `key`.
fn taproot_sighash(key: bitcoin::key::TweakedPublicKey) -> [u8; 32] {
    let spk = ScriptBuf::new_p2tr_tweaked(key);
    let value = Amount::from_sat(90_000);
    let prevout = TxOut {
        value,
        script_pubkey: spk.clone(),
    };
    let tx = spending_tx(value, spk);
    let mut cache = SighashCache::new(&tx);
    let h = cache
        .taproot_key_spend_signature_hash(0, &Prevouts::All(&[prevout]), TapSighashType::Default)
        .expect("sighash");
    *h.as_ref()
}

fn sign_sim(
    shares: &[FrostKeyShare],
    signers: &[u16],
    path: &[u32],
    sighash: &[u8; 32],
) -> Vec<secp256k1::schnorr::Signature> {
    let t = u16::try_from(signers.len()).expect("small");
    signer_protocol::round_based::sim::run::<FrostSignMsg, _>(t, |pos, party| {
        let share = &shares[usize::from(signers[usize::from(pos)])];
        async move {
            let ok = InputPermit::for_tests_only(0, *sighash);
            frost::sign(party, pos, signers, share, path, sighash, &ok).await
        }
    })
    .expect("simulation")
    .into_vec()
    .into_iter()
    .map(|r| r.expect("signing"))
    .collect()
}

/// FROST signs only the sighash its permit allows; nothing is sent otherwise.
#[test]
fn signing_refuses_a_permit_for_another_sighash() {
    let shares = keygen_sim(3, 2);
    let signers = [0u16, 1];
    let sighash = [5u8; 32];
    let results = signer_protocol::round_based::sim::run::<FrostSignMsg, _>(2, |pos, party| {
        let share = &shares[usize::from(signers[usize::from(pos)])];
        let other = InputPermit::for_tests_only(0, [6; 32]);
        async move { frost::sign(party, pos, &signers, share, &[], &sighash, &other).await }
    })
    .expect("simulation")
    .into_vec();
    for r in results {
        let err = r.expect_err("signing without leave must be refused");
        assert!(matches!(err, ProtocolError::NotPermitted { .. }), "{err}");
    }
}

fn verify(
    key: bitcoin::key::TweakedPublicKey,
    sighash: [u8; 32],
    sig: &secp256k1::schnorr::Signature,
) {
    Secp256k1::verification_only()
        .verify_schnorr(
            sig,
            &secp256k1::Message::from_digest(sighash),
            &key.to_x_only_public_key(),
        )
        .expect("bip-340 signature must verify for the tweaked output key");
}

#[test]
fn frost_3_of_5_signs_taproot_key_spends_for_master_and_hd_child() {
    let shares = keygen_sim(5, 3);
    let pk = shares[0].public_key();
    for (i, s) in shares.iter().enumerate() {
        assert_eq!(usize::from(s.index()), i);
        assert_eq!((s.threshold(), s.parties()), (3, 5));
        assert_eq!(s.public_key(), pk);
        assert!(s.chain_code().is_some());
    }
    for path in [vec![], vec![0u32, 3], vec![1, 0]] {
        let key = bitcoin_output_key(&shares[0], &path);
        assert_eq!(shares[2].output_key(&path).expect("output key"), key);
        let sighash = taproot_sighash(key);
        for sig in sign_sim(&shares, &[4, 1, 2], &path, &sighash) {
            assert_eq!(sig.as_ref().len(), 64);
            verify(key, sighash, &sig);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frost_2_of_3_keygen_and_signing_over_channels() {
    let shares = Arc::new(keygen_channels(3, 2).await);
    let path = vec![0u32, 11];
    let key = bitcoin_output_key(&shares[1], &path);
    let sighash = taproot_sighash(key);
    let signers = vec![2u16, 1];
    let s2 = shares.clone();
    let sigs = all_ok(
        run_over_channels::<FrostSignMsg, _, _, _>(
            ProtocolKind::FrostSign,
            2,
            None,
            Duration::from_secs(60),
            move |pos, party| {
                let shares = s2.clone();
                let signers = signers.clone();
                let path = path.clone();
                async move {
                    let share = &shares[usize::from(signers[usize::from(pos)])];
                    frost::sign(
                        party,
                        pos,
                        &signers,
                        share,
                        &path,
                        &sighash,
                        &InputPermit::for_tests_only(0, sighash),
                    )
                    .await
                }
            },
        )
        .await,
    );
    for sig in &sigs {
        verify(key, sighash, sig);
    }
    // a different message does not verify with these signatures
    let other = taproot_sighash(bitcoin_output_key(&shares[1], &[5]));
    assert!(Secp256k1::verification_only()
        .verify_schnorr(
            &sigs[0],
            &secp256k1::Message::from_digest(other),
            &key.to_x_only_public_key()
        )
        .is_err());
}

#[test]
fn frost_share_round_trips_and_debug_is_redacted() {
    let shares = keygen_sim(3, 2);
    let s = &shares[1];
    let bytes = s.to_bytes().expect("encode");
    let back = FrostKeyShare::from_bytes(&bytes).expect("decode");
    assert_eq!(back.public_key(), s.public_key());
    assert_eq!(
        back.output_key(&[1]).expect("key"),
        s.output_key(&[1]).expect("key")
    );
    assert_eq!(*back.to_bytes().expect("encode"), *bytes);
    assert!(signer_protocol::ecdsa::EcdsaKeyShare::from_bytes(&bytes).is_err());
    assert_redacted(&format!("{s:?}"), &bytes, &[s.public_key().to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_frost_signing_message_is_blamed_on_its_sender() {
    let shares = Arc::new(keygen_sim(3, 2));
    let sighash = taproot_sighash(shares[0].output_key(&[]).expect("key"));
    let signers = vec![0u16, 2];
    // the party at position 1 (keygen index 2) sends garbage to position 0
    let tamper: Tamper = Arc::new(|s, r, _t: MsgType, _p: &Bytes| {
        (s == 1 && r == 0).then(|| Bytes::from_static(&[1, 0xff, 0xff]))
    });
    let err = run_observe::<FrostSignMsg, _, _, _>(
        ProtocolKind::FrostSign,
        2,
        Some(tamper),
        0,
        move |pos, party| {
            let shares = shares.clone();
            let signers = signers.clone();
            async move {
                let share = &shares[usize::from(signers[usize::from(pos)])];
                frost::sign(
                    party,
                    pos,
                    &signers,
                    share,
                    &[],
                    &sighash,
                    &InputPermit::for_tests_only(0, sighash),
                )
                .await
            }
        },
    )
    .await
    .expect_err("position 0 must abort");
    assert!(
        matches!(
            err,
            ProtocolError::MalformedMessage {
                party: 1,
                protocol: ProtocolKind::FrostSign,
                ..
            }
        ),
        "{err}"
    );
}

/// FROST nonces are drawn fresh inside every signing session and kept nowhere: two
/// sessions over the same share, signer set and sighash produce different nonce
/// commitments R (a reused nonce would repeat R and reveal the share), and the
/// share's stored form is unchanged by signing (no nonce state to persist).
#[test]
fn frost_signing_draws_fresh_nonces_every_session_and_stores_none() {
    let shares = keygen_sim(3, 2);
    let before: Vec<_> = shares
        .iter()
        .map(|s| s.to_bytes().expect("encode").to_vec())
        .collect();
    let key = bitcoin_output_key(&shares[0], &[]);
    let sighash = taproot_sighash(key);
    let first = sign_sim(&shares, &[0, 2], &[], &sighash);
    let second = sign_sim(&shares, &[0, 2], &[], &sighash);
    for sig in first.iter().chain(&second) {
        verify(key, sighash, sig);
    }
    assert_ne!(
        first[0].as_ref()[..32],
        second[0].as_ref()[..32],
        "two sessions used the same nonce commitment"
    );
    let after: Vec<_> = shares
        .iter()
        .map(|s| s.to_bytes().expect("encode").to_vec())
        .collect();
    assert_eq!(before, after, "signing changed what is stored of a share");
}
