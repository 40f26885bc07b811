//! CGGMP24 end to end: keygen and aux info over the channel delivery (2-of-3, with the
//! public test-only prime fixtures), presignatures and signing verified with libsecp256k1
//! over Bitcoin sighashes, serialization, redaction and blame.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bitcoin::bip32::{ChildNumber, DerivationPath};
use bitcoin::secp256k1::{self, Secp256k1};
use bitcoin::sighash::{EcdsaSighashType, SighashCache};
use bitcoin::{Amount, CompressedPublicKey, NetworkKind, ScriptBuf};
use bytes::Bytes;
use common::*;
use signer_protocol::ecdsa::{
    self, EcdsaAuxInfo, EcdsaAuxMsg, EcdsaIncompleteShare, EcdsaKeyShare, EcdsaKeygenMsg,
    EcdsaPartialSignature, EcdsaPresignature, EcdsaSignMsg, PresignaturePublic,
};
use signer_protocol::local::Tamper;
use signer_protocol::{
    codec, ExecutionId, MsgType, ProgressEvent, ProgressFn, ProtocolError, ProtocolKind,
    SighashMessage,
};

struct Keys {
    incomplete: Vec<EcdsaIncompleteShare>,
    aux: Vec<EcdsaAuxInfo>,
    shares: Vec<EcdsaKeyShare>,
    aux_progress_rounds: u32,
    aux_finished: u32,
}

static KEYS: OnceLock<Keys> = OnceLock::new();

/// 2-of-3 key, generated once per test binary: keygen and aux info both run as three
/// parties on their own threads, connected through `ChannelDelivery`.
fn keys() -> &'static Keys {
    KEYS.get_or_init(|| {
        std::thread::spawn(|| {
            tokio::runtime::Runtime::new()
                .expect("runtime")
                .block_on(make_keys())
        })
        .join()
        .expect("key generation thread")
    })
}

async fn make_keys() -> Keys {
    let (n, t) = (3u16, 2u16);
    let eid_k = eid("keys", ProtocolKind::EcdsaKeygen, t, n);
    let incomplete = all_ok(
        run_over_channels::<EcdsaKeygenMsg, _, _, _>(
            ProtocolKind::EcdsaKeygen,
            n,
            None,
            Duration::from_secs(60),
            move |i, party| async move { ecdsa::keygen(party, &eid_k, i, n, t, None).await },
        )
        .await,
    );
    let rounds = Arc::new(AtomicU32::new(0));
    let finished = Arc::new(AtomicU32::new(0));
    let progress: ProgressFn = {
        let (rounds, finished) = (rounds.clone(), finished.clone());
        Arc::new(move |ev| match ev {
            ProgressEvent::Round { .. } => {
                rounds.fetch_add(1, Ordering::SeqCst);
            }
            ProgressEvent::Finished { .. } => {
                finished.fetch_add(1, Ordering::SeqCst);
            }
            _ => {}
        })
    };
    let eid_a = eid("keys", ProtocolKind::EcdsaAuxInfo, t, n);
    let aux =
        all_ok(
            run_over_channels::<EcdsaAuxMsg, _, _, _>(
                ProtocolKind::EcdsaAuxInfo,
                n,
                None,
                Duration::from_secs(600),
                move |i, party| {
                    let progress = progress.clone();
                    async move {
                        ecdsa::aux_info(party, &eid_a, i, n, test_primes(i), Some(progress)).await
                    }
                },
            )
            .await,
        );
    let shares = incomplete
        .iter()
        .zip(&aux)
        .map(|(s, a)| EcdsaKeyShare::from_parts(s, a).expect("parts must combine"))
        .collect();
    Keys {
        incomplete,
        aux,
        shares,
        aux_progress_rounds: rounds.load(Ordering::SeqCst),
        aux_finished: finished.load(Ordering::SeqCst),
    }
}

/// P2WPKH spend of an output locked to `pk`, and its BIP-143 message.
fn p2wpkh_message(pk: secp256k1::PublicKey) -> (SighashMessage, [u8; 32]) {
    let cpk = CompressedPublicKey(pk);
    let spk = ScriptBuf::new_p2wpkh(&cpk.wpubkey_hash());
    let value = Amount::from_sat(150_000);
    let tx = spending_tx(value, spk.clone());
    let mut cache = SighashCache::new(&tx);
    let msg = SighashMessage::p2wpkh(&mut cache, 0, &spk, value, EcdsaSighashType::All)
        .expect("p2wpkh message");
    let sighash = cache
        .p2wpkh_signature_hash(0, &spk, value, EcdsaSighashType::All)
        .expect("bitcoin sighash");
    (msg, *sighash.as_ref())
}

/// Child key derived independently with the `bitcoin` crate's BIP-32 from the xpub.
fn bip32_child(share: &EcdsaKeyShare, path: &[u32]) -> secp256k1::PublicKey {
    let xpub = share.xpub(NetworkKind::Test).expect("hd key");
    let path: DerivationPath = path
        .iter()
        .map(|&i| ChildNumber::from_normal_idx(i).expect("normal index"))
        .collect::<Vec<_>>()
        .into();
    xpub.derive_pub(&Secp256k1::verification_only(), &path)
        .expect("derive")
        .public_key
}

fn verify(pk: &secp256k1::PublicKey, sighash: [u8; 32], sig: &secp256k1::ecdsa::Signature) {
    Secp256k1::verification_only()
        .verify_ecdsa(&secp256k1::Message::from_digest(sighash), sig, pk)
        .expect("signature must verify with libsecp256k1");
}

async fn presign_over_channels(
    signers: Vec<u16>,
    path: Vec<u32>,
    tag: &str,
) -> Vec<EcdsaPresignature> {
    let k = keys();
    let t = u16::try_from(signers.len()).expect("small");
    let eid_p = eid(tag, ProtocolKind::EcdsaPresign, t, 3);
    let signers2 = signers.clone();
    all_ok(
        run_over_channels::<EcdsaSignMsg, _, _, _>(
            ProtocolKind::EcdsaPresign,
            t,
            None,
            Duration::from_secs(300),
            move |pos, party| {
                let signers = signers2.clone();
                let path = path.clone();
                async move {
                    let share = &keys().shares[usize::from(signers[usize::from(pos)])];
                    ecdsa::presign(party, &eid_p, pos, &signers, share, &path, None).await
                }
            },
        )
        .await,
    )
    .into_iter()
    .inspect(|p| {
        assert_eq!(p.public().signers(), signers.as_slice());
        assert_eq!(
            p.public().public_key(),
            k.shares[0]
                .derive_public_key(p.public().derivation_path())
                .expect("child")
        );
    })
    .collect()
}

#[test]
fn keygen_and_aux_info_over_channels_give_consistent_shares() {
    let k = keys();
    let pk = k.shares[0].public_key();
    for (i, s) in k.shares.iter().enumerate() {
        assert_eq!(usize::from(s.index()), i);
        assert_eq!((s.threshold(), s.parties()), (2, 3));
        assert_eq!(s.public_key(), pk, "all parties report the same public key");
        assert_eq!(s.chain_code(), k.shares[0].chain_code());
        assert!(s.chain_code().is_some(), "keys are hd-enabled");
        assert_eq!(k.incomplete[i].public_key(), pk);
        assert_eq!(k.aux[i].parties(), 3);
    }
    assert_eq!(pk.serialize().len(), 33);
    // every party reported progress through rounds and the end of the protocol
    assert!(
        k.aux_progress_rounds >= 3 * 3,
        "rounds seen: {}",
        k.aux_progress_rounds
    );
    assert_eq!(k.aux_finished, 3);
    // the library's slip-10 derivation equals bip-32 public derivation of the xpub
    for path in [vec![0u32], vec![1, 42], vec![0, 5, 7]] {
        assert_eq!(
            k.shares[1].derive_public_key(&path).expect("derive"),
            bip32_child(&k.shares[1], &path)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presignature_over_channels_signs_p2wpkh_sighash_of_hd_child() {
    let k = keys();
    // signer set: keygen parties 2 and 0, in that run order
    let signers = vec![2u16, 0];
    let path = vec![0u32, 7];
    let presigs = presign_over_channels(signers.clone(), path.clone(), "hd").await;
    let child = bip32_child(&k.shares[0], &path);
    assert_eq!(presigs[0].public().public_key(), child);
    assert_eq!(presigs[0].public().id(), presigs[1].public().id());
    assert_eq!(presigs[0].public().derivation_path(), path.as_slice());

    let (msg, sighash) = p2wpkh_message(child);
    assert_eq!(
        msg.sighash(),
        sighash,
        "double sha-256 of the bip-143 preimage"
    );

    let mut partials = Vec::new();
    let mut public: Option<PresignaturePublic> = None;
    for p in presigs {
        // stored and restored (as the node does) before use; only the restored copy is used
        let sealed = p.to_bytes().expect("encode presignature");
        drop(p);
        let restored = EcdsaPresignature::from_bytes(&sealed).expect("decode presignature");
        let (partial, pubdata) = restored
            .issue_partial_signature(
                &msg,
                &path,
                &vote::InputPermit::for_tests_only(0, msg.sighash()),
            )
            .expect("issue partial");
        let wire = partial.to_bytes();
        partials.push(EcdsaPartialSignature::from_bytes(&wire).expect("partial wire form"));
        public = Some(pubdata);
    }
    let public = public.expect("two presignatures");
    let public =
        PresignaturePublic::from_bytes(&public.to_bytes().expect("encode")).expect("decode");
    partials.reverse(); // order does not matter
    let sig = ecdsa::combine_partial_signatures(&public, &partials, &msg).expect("combine");
    verify(&child, sighash, &sig);
    let mut normalized = sig;
    normalized.normalize_s();
    assert_eq!(normalized, sig, "signature is low-s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presignature_refuses_another_derivation_path() {
    let presigs = presign_over_channels(vec![0, 1], vec![3], "path").await;
    let (msg, _) = p2wpkh_message(keys().shares[0].public_key());
    for p in presigs {
        let err = p
            .issue_partial_signature(
                &msg,
                &[4],
                &vote::InputPermit::for_tests_only(0, msg.sighash()),
            )
            .expect_err("path chosen after presigning must be refused");
        assert!(matches!(err, ProtocolError::InvalidArgument(_)), "{err}");
    }
}

/// The protocol entry points sign only the message their permit allows: a permit
/// for another sighash is refused before any message is sent or the presignature
/// is used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_refuses_a_permit_for_another_message() {
    let k = keys();
    let (msg, _) = p2wpkh_message(k.shares[0].public_key());
    let other = vote::InputPermit::for_tests_only(0, [7; 32]);
    let presigs = presign_over_channels(vec![0, 1], vec![], "permit").await;
    for p in presigs {
        let err = p
            .issue_partial_signature(&msg, &[], &other)
            .expect_err("a permit for another sighash must be refused");
        assert!(matches!(err, ProtocolError::NotPermitted { .. }), "{err}");
    }
    let signers = [0u16, 1];
    let eid_s = eid("permit", ProtocolKind::EcdsaSign, 2, 3);
    let results =
        signer_protocol::round_based::sim::run::<EcdsaSignMsg, _>(2, |pos, party| {
            let share = &k.shares[usize::from(signers[usize::from(pos)])];
            let other = vote::InputPermit::for_tests_only(0, [7; 32]);
            async move {
                ecdsa::sign(party, &eid_s, pos, &signers, share, &[], &msg, &other, None).await
            }
        })
        .expect("simulation")
        .into_vec();
    for r in results {
        let err = r.expect_err("interactive signing without leave must be refused");
        assert!(matches!(err, ProtocolError::NotPermitted { .. }), "{err}");
    }
}

#[test]
fn full_signing_without_presignature_in_simulation() {
    let k = keys();
    let signers = [1u16, 2];
    let path = [1u32, 3];
    let child = bip32_child(&k.shares[1], &path);
    let (msg, sighash) = p2wpkh_message(child);
    let eid_s = eid("full", ProtocolKind::EcdsaSign, 2, 3);
    let sigs = signer_protocol::round_based::sim::run::<EcdsaSignMsg, _>(2, |pos, party| {
        let share = &k.shares[usize::from(signers[usize::from(pos)])];
        async move {
            let ok = vote::InputPermit::for_tests_only(0, msg.sighash());
            ecdsa::sign(party, &eid_s, pos, &signers, share, &path, &msg, &ok, None).await
        }
    })
    .expect("simulation")
    .into_vec();
    for s in sigs {
        let s = s.expect("signing");
        verify(&child, sighash, &s);
    }
}

#[test]
fn invalid_partial_signature_is_blamed_on_its_issuer() {
    let k = keys();
    let signers = [0u16, 1];
    let eid_p = eid("blame", ProtocolKind::EcdsaPresign, 2, 3);
    let presigs = signer_protocol::round_based::sim::run::<EcdsaSignMsg, _>(2, |pos, party| {
        let share = &k.shares[usize::from(signers[usize::from(pos)])];
        async move { ecdsa::presign(party, &eid_p, pos, &signers, share, &[], None).await }
    })
    .expect("simulation")
    .into_vec();
    let (msg, sighash) = p2wpkh_message(k.shares[0].public_key());
    let mut partials = Vec::new();
    let mut public = None;
    for p in presigs {
        let (partial, pubdata) = p
            .expect("presign")
            .issue_partial_signature(
                &msg,
                &[],
                &vote::InputPermit::for_tests_only(0, msg.sighash()),
            )
            .expect("issue");
        partials.push(partial);
        public = Some(pubdata);
    }
    let public = public.expect("public data");
    let mut forged = partials.clone();
    forged[1].sigma[31] ^= 1;
    match ecdsa::combine_partial_signatures(&public, &forged, &msg) {
        Err(ProtocolError::InvalidPartialSignature { party }) => assert_eq!(party, 1),
        other => panic!("expected blame of signer 1, got {other:?}"),
    }
    // a partial issued for another message is caught too
    let (other_msg, _) = p2wpkh_message(k.shares[0].derive_public_key(&[9]).expect("child"));
    assert!(ecdsa::combine_partial_signatures(&public, &partials, &other_msg).is_err());
    // the honest set combines
    let sig = ecdsa::combine_partial_signatures(&public, &partials, &msg).expect("combine");
    verify(&k.shares[0].public_key(), sighash, &sig);
}

#[test]
fn secret_values_round_trip_and_reject_bad_encodings() {
    let k = keys();
    let share = &k.shares[2];
    let bytes = share.to_bytes().expect("encode");
    let back = EcdsaKeyShare::from_bytes(&bytes).expect("decode");
    assert_eq!(back.public_key(), share.public_key());
    assert_eq!(back.index(), 2);
    assert_eq!(*back.to_bytes().expect("encode"), *bytes);

    let inc = k.incomplete[1].to_bytes().expect("encode");
    assert_eq!(
        *EcdsaIncompleteShare::from_bytes(&inc)
            .expect("decode")
            .to_bytes()
            .expect("encode"),
        *inc
    );
    let aux = k.aux[0].to_bytes().expect("encode");
    let aux_back = EcdsaAuxInfo::from_bytes(&aux).expect("decode");
    assert_eq!(*aux_back.to_bytes().expect("encode"), *aux);
    // aux info is reusable: it completes the same keygen share again after a reload
    let again = EcdsaKeyShare::from_parts(&k.incomplete[0], &aux_back).expect("combine");
    assert_eq!(again.public_key(), share.public_key());
    // but not with another party's share
    assert!(EcdsaKeyShare::from_parts(&k.incomplete[1], &aux_back).is_err());

    // wrong kind, truncation, corruption and oversize are refused
    assert!(EcdsaAuxInfo::from_bytes(&bytes).is_err());
    assert!(EcdsaKeyShare::from_bytes(&bytes[..bytes.len() - 1]).is_err());
    let mut corrupt = bytes.to_vec();
    let mid = corrupt.len() / 2;
    corrupt[mid] ^= 0xff;
    assert!(EcdsaKeyShare::from_bytes(&corrupt).is_err());
    let huge = vec![0u8; codec::MAX_STORED_SIZE + 1];
    assert!(EcdsaKeyShare::from_bytes(&huge).is_err());
}

#[test]
fn prime_sets_round_trip_and_are_validated() {
    let p = test_primes(4);
    let bytes = p.to_bytes().expect("encode");
    let back = signer_protocol::ecdsa::PrimeSet::from_bytes(&bytes).expect("decode");
    assert_eq!(*back.to_bytes().expect("encode"), *bytes);
    // a composite in place of a prime is refused: replace one prime's last hex digit
    let json = p.to_json().expect("json");
    let v: serde_json::Value = serde_json::from_str(&json).expect("json value");
    let mut v2 = v.clone();
    let digits = v2["primes"][0]["value"]
        .as_str()
        .expect("hex digits")
        .to_string();
    let last = digits.chars().last().expect("non-empty");
    let bumped = if last == 'f' { 'd' } else { 'f' };
    let tampered = format!("{}{}", &digits[..digits.len() - 1], bumped);
    v2["primes"][0]["value"] = serde_json::Value::String(tampered);
    let err = signer_protocol::ecdsa::PrimeSet::from_json(&v2.to_string())
        .expect_err("non-prime must be refused");
    assert!(err.to_string().contains("safe prime"), "{err}");
    // duplicate primes are refused
    let mut v3 = v.clone();
    v3["primes"][1] = v3["primes"][0].clone();
    assert!(signer_protocol::ecdsa::PrimeSet::from_json(&v3.to_string()).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_output_of_secret_types_is_redacted() {
    let k = keys();
    let pk_hex = |s: &EcdsaKeyShare| s.public_key().to_string();
    let share = &k.shares[0];
    assert_redacted(
        &format!("{share:?}"),
        &share.to_bytes().expect("encode"),
        &[pk_hex(share)],
    );
    let inc = &k.incomplete[0];
    assert_redacted(
        &format!("{inc:?}"),
        &inc.to_bytes().expect("encode"),
        &[pk_hex(share)],
    );
    let aux = &k.aux[0];
    assert_redacted(&format!("{aux:?}"), &aux.to_bytes().expect("encode"), &[]);
    let primes = test_primes(0);
    assert_redacted(
        &format!("{primes:?}"),
        &primes.to_bytes().expect("encode"),
        &[],
    );
    let presig = presign_over_channels(vec![0, 2], vec![], "debug")
        .await
        .into_iter()
        .next()
        .expect("presignature");
    assert_redacted(
        &format!("{presig:?}"),
        &presig.to_bytes().expect("encode"),
        &[],
    );
}

/// Replaces every payload party `from` sends to party `to`.
fn tamper_with(from: u16, to: u16, f: fn(&Bytes) -> Option<Bytes>) -> Tamper {
    Arc::new(move |s, r, _t: MsgType, p: &Bytes| if s == from && r == to { f(p) } else { None })
}

type KeygenFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<EcdsaIncompleteShare, ProtocolError>>>,
>;

fn keygen_party(
    eid: ExecutionId,
) -> impl Fn(u16, ChanParty<EcdsaKeygenMsg>) -> KeygenFuture + Send + Sync + Clone + 'static {
    move |i, party| Box::pin(async move { ecdsa::keygen(party, &eid, i, 3, 2, None).await })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_message_is_blamed_on_its_sender() {
    let eid = eid("garbage", ProtocolKind::EcdsaKeygen, 2, 3);
    let tamper = tamper_with(1, 2, |_| Some(Bytes::from_static(b"\x01not cbor at all")));
    let err = run_observe(
        ProtocolKind::EcdsaKeygen,
        3,
        Some(tamper),
        2,
        keygen_party(eid),
    )
    .await
    .expect_err("party 2 must abort");
    match &err {
        ProtocolError::MalformedMessage {
            party, protocol, ..
        } => {
            assert_eq!((*party, *protocol), (1, ProtocolKind::EcdsaKeygen))
        }
        other => panic!("expected malformed message from party 1, got {other}"),
    }
    assert_eq!(err.culprits(), vec![1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_message_is_blamed_on_its_sender() {
    let eid = eid("huge", ProtocolKind::EcdsaKeygen, 2, 3);
    let tamper = tamper_with(0, 1, |_| {
        Some(Bytes::from(vec![1u8; codec::DEFAULT_MAX_MESSAGE_SIZE + 1]))
    });
    let err = run_observe(
        ProtocolKind::EcdsaKeygen,
        3,
        Some(tamper),
        1,
        keygen_party(eid),
    )
    .await
    .expect_err("party 1 must abort");
    assert!(
        matches!(err, ProtocolError::OversizedMessage { party: 0, .. }),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inconsistent_secret_share_is_blamed_on_its_dealer() {
    // party 0 sends party 1 a well-formed but wrong Feldman share
    let eid = eid("feldman", ProtocolKind::EcdsaKeygen, 2, 3);
    let tamper = tamper_with(0, 1, |p| {
        let mut msg: EcdsaKeygenMsg =
            codec::decode_message(p, codec::DEFAULT_MAX_MESSAGE_SIZE).expect("own message");
        if let cggmp24::keygen::ThresholdMsg::Round2Uni(m) = &mut msg {
            m.sigma += cggmp24::generic_ec::Scalar::one();
            Some(Bytes::from(codec::encode_message(&msg).expect("encode")))
        } else {
            None
        }
    });
    let err = run_observe(
        ProtocolKind::EcdsaKeygen,
        3,
        Some(tamper),
        1,
        keygen_party(eid),
    )
    .await
    .expect_err("party 1 must abort");
    match &err {
        ProtocolError::Misbehaviour { culprits, .. } => assert_eq!(culprits, &vec![0]),
        other => panic!("expected misbehaviour of party 0, got {other}"),
    }
    assert!(err
        .to_string()
        .starts_with("ecdsa-keygen: aborted by misbehaving party 0"));
}

/// `EcdsaPresignature` must not implement `Clone` (compile-time check: if it did, the
/// trait selection below would be ambiguous and this file would not compile).
#[test]
fn presignature_type_is_not_clone() {
    trait AmbiguousIfClone<A> {
        fn check() {}
    }
    impl<T: ?Sized> AmbiguousIfClone<()> for T {}
    struct IsClone;
    impl<T: Clone> AmbiguousIfClone<IsClone> for T {}
    <EcdsaPresignature as AmbiguousIfClone<_>>::check();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn precomputed_share_presigns_with_a_plain_one_and_is_stored_without_tables() {
    let k = keys();
    let plain = k.shares[1].to_bytes().expect("encode");
    let fast = EcdsaKeyShare::from_bytes(&plain)
        .expect("decode")
        .with_precomputation()
        .expect("precompute");
    assert!(fast.is_precomputed() && !k.shares[1].is_precomputed());
    assert!(fast.accelerator_bytes() > 0);
    // A copy with the tables leaves the share it was made from plain (a node signs
    // with that one while the tables are built) and stores the same bytes.
    let copy = k.shares[1].precomputed_copy().expect("precompute a copy");
    assert!(copy.is_precomputed() && !k.shares[1].is_precomputed());
    assert_eq!(*copy.to_bytes().expect("encode"), *plain);
    // Tables built once on the aux info accelerate every share combined with it
    // (the keys of one node set share them), and are never stored either.
    let aux = k.aux[1]
        .precomputed_copy()
        .expect("precompute the aux info");
    assert!(aux.is_precomputed() && !k.aux[1].is_precomputed());
    assert_eq!(
        *aux.to_bytes().expect("encode"),
        *k.aux[1].to_bytes().expect("encode")
    );
    let combined = EcdsaKeyShare::from_parts(&k.incomplete[1], &aux).expect("combine");
    assert!(combined.is_precomputed());
    assert_eq!(*combined.to_bytes().expect("encode"), *plain);
    assert_eq!(
        *fast.to_bytes().expect("encode"),
        *plain,
        "tables are not stored"
    );
    let fast = Arc::new(fast);

    let signers = vec![1u16, 2];
    let eid_p = eid("fast", ProtocolKind::EcdsaPresign, 2, 3);
    let f2 = fast.clone();
    let presigs = all_ok(
        run_over_channels::<EcdsaSignMsg, _, _, _>(
            ProtocolKind::EcdsaPresign,
            2,
            None,
            Duration::from_secs(300),
            move |pos, party| {
                let fast = f2.clone();
                async move {
                    let share = if pos == 0 { &*fast } else { &keys().shares[2] };
                    ecdsa::presign(party, &eid_p, pos, &[1, 2], share, &[], None).await
                }
            },
        )
        .await,
    );
    let (msg, sighash) = p2wpkh_message(fast.public_key());
    let mut partials = Vec::new();
    let mut public = None;
    for p in presigs {
        assert_eq!(p.public().signers(), signers.as_slice());
        let (partial, pubdata) = p
            .issue_partial_signature(
                &msg,
                &[],
                &vote::InputPermit::for_tests_only(0, msg.sighash()),
            )
            .expect("issue");
        partials.push(partial);
        public = Some(pubdata);
    }
    let sig = ecdsa::combine_partial_signatures(&public.expect("public"), &partials, &msg)
        .expect("combine");
    verify(&fast.public_key(), sighash, &sig);
}
