//! Key resharing and refresh (`signer_protocol::reshare`), both key types, in process:
//! the shared public key, chain code, xpub and child keys stay identical, the new set
//! signs (FROST directly, ECDSA after aux info for the new set, with the public TEST-ONLY
//! prime fixtures), refreshed shares do not mix with old ones, and every cheating dealer
//! is refused and blamed with evidence anyone can verify.
#![cfg(feature = "test-fixtures")]

mod common;

use std::collections::VecDeque;
use std::sync::OnceLock;
use std::time::Duration;

use bitcoin::bip32::{ChildNumber, DerivationPath};
use bitcoin::key::TapTweak;
use bitcoin::secp256k1::{self, PublicKey, Secp256k1};
use bitcoin::sighash::{EcdsaSighashType, Prevouts, SighashCache, TapSighashType};
use bitcoin::{Amount, CompressedPublicKey, NetworkKind, ScriptBuf, TxOut};
use cggmp24::generic_ec::{curves::Secp256k1 as Curve, Point, Scalar};
use common::*;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};
use signer_protocol::ecdsa::{
    self, EcdsaAuxInfo, EcdsaAuxMsg, EcdsaIncompleteShare, EcdsaKeyShare, EcdsaKeygenMsg,
    EcdsaSignMsg,
};
use signer_protocol::frost::{self, FrostKeyShare, FrostKeygenMsg, FrostSignMsg};
use signer_protocol::reshare::{
    self, DealerFault, Evidence, FaultKind, KeyKind, OldShare, Outgoing, Participant,
    PublicKeyInfo, ReshareError, ReshareMsg, ReshareOutput, ReshareParty, ReshareSetup,
};
use signer_protocol::round_based::sim;
use signer_protocol::{ExecutionId, MsgType, ProtocolKind, SighashMessage};
use vote::InputPermit;

// ---------------------------------------------------------------------------------------
// identities, roles, runs

fn identities(n: usize) -> Vec<Ed25519KeyPair> {
    let rng = SystemRandom::new();
    (0..n)
        .map(|_| {
            let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("ed25519 keygen");
            Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("ed25519 key")
        })
        .collect()
}

fn key_of(k: &Ed25519KeyPair) -> [u8; 32] {
    k.public_key().as_ref().try_into().expect("32-byte key")
}

/// Role of one run participant: the old index it holds (if any), whether it deals, and
/// its new index (if it receives).
#[derive(Clone, Copy, Debug)]
struct Role {
    old: Option<u16>,
    deals: bool,
    new: Option<u16>,
}

const fn kept(old: u16, deals: bool, new: u16) -> Role {
    Role {
        old: Some(old),
        deals,
        new: Some(new),
    }
}

const fn leaving(old: u16) -> Role {
    Role {
        old: Some(old),
        deals: true,
        new: None,
    }
}

const fn joining(new: u16) -> Role {
    Role {
        old: None,
        deals: false,
        new: Some(new),
    }
}

/// One planned run: setup, execution id and the participants' identity keys.
struct Plan {
    setup: ReshareSetup,
    eid: ExecutionId,
    ids: Vec<Ed25519KeyPair>,
    roles: Vec<Role>,
}

fn plan(kind: KeyKind, old: PublicKeyInfo, t_new: u16, n_new: u16, roles: &[Role]) -> Plan {
    let ids = identities(roles.len());
    let participants = roles
        .iter()
        .zip(&ids)
        .map(|(r, id)| Participant {
            identity_key: key_of(id),
            dealer_index: r.deals.then(|| r.old.expect("a dealer holds an old share")),
            receiver_index: r.new,
        })
        .collect();
    let setup = ReshareSetup::new(kind, old, t_new, n_new, participants).expect("valid setup");
    let mut session = [0u8; 16];
    rand::Rng::fill(&mut rand::thread_rng(), &mut session);
    let eid = setup.execution_id(&session);
    Plan {
        setup,
        eid,
        ids,
        roles: roles.to_vec(),
    }
}

impl Plan {
    /// The state machine of every participant; dealers get their old share from `old`
    /// (indexed by old key index).
    fn parties<'a>(
        &self,
        old: impl Fn(u16) -> OldShare<'a>,
        faults: &[(u16, DealerFault)],
    ) -> Vec<ReshareParty> {
        (0u16..)
            .zip(&self.roles)
            .map(|(r, role)| {
                let share = role.deals.then(|| old(role.old.expect("dealer")));
                let p = ReshareParty::new(&self.eid, self.setup.clone(), r, share)
                    .expect("valid party");
                match faults.iter().find(|(who, _)| *who == r) {
                    Some((_, f)) => p.with_dealer_fault(*f),
                    None => p,
                }
            })
            .collect()
    }

    /// Runs every participant in round-based's simulator (through `reshare::run`).
    fn run_sim<'a>(
        &self,
        old: impl Fn(u16) -> OldShare<'a>,
        faults: &[(u16, DealerFault)],
    ) -> Vec<Result<ReshareOutput, ReshareError>> {
        let mut states: Vec<Option<ReshareParty>> =
            self.parties(old, faults).into_iter().map(Some).collect();
        let n = self.setup.run_parties();
        let ids = &self.ids;
        sim::run::<ReshareMsg, _>(n, |i, party| {
            let state = states[usize::from(i)]
                .take()
                .expect("each party starts once");
            let signer = &ids[usize::from(i)];
            async move { reshare::run(party, state, signer).await }
        })
        .expect("simulation")
        .into_vec()
    }

    fn run_ok<'a>(&self, old: impl Fn(u16) -> OldShare<'a>) -> Vec<ReshareOutput> {
        self.run_sim(old, &[])
            .into_iter()
            .enumerate()
            .map(|(r, o)| o.unwrap_or_else(|e| panic!("participant {r} failed: {e}")))
            .collect()
    }
}

/// Checks that every output describes the same new key as `old` (public key, chain
/// code, xpub, a child key) with the new threshold and party count, that every
/// participant confirms the same value, and that exactly the receivers got shares.
fn assert_same_key(old: &PublicKeyInfo, plan: &Plan, outs: &[ReshareOutput], t: u16, n: u16) {
    let path = [0u32, 7];
    let conf = outs[0].confirmation();
    for (out, role) in outs.iter().zip(&plan.roles) {
        let k = out.key_info();
        // bit-identical public key (the 33-byte encoding carries the Y parity), chain code,
        // xpub and BIP-32 child keys
        assert_eq!(k.public_key().serialize(), old.public_key().serialize());
        assert_eq!(k.chain_code(), old.chain_code());
        assert!(k.chain_code().is_some(), "test keys are HD keys");
        assert_eq!(k.xpub(NetworkKind::Main), old.xpub(NetworkKind::Main));
        assert_eq!(
            k.derive_public_key(&path).expect("child"),
            old.derive_public_key(&path).expect("child")
        );
        assert_eq!((k.threshold(), k.parties()), (t, n));
        assert_eq!(
            out.confirmation(),
            conf,
            "all participants confirm the same run"
        );
        assert_eq!(out.share().is_some(), role.new.is_some());
    }
}

/// `Σ λ_j·X_j` at 0 over the given (key index, public share) pairs, evaluation points
/// `j + 1`: the public key a set of shares would sign for.
fn interpolate(points: &[(u16, PublicKey)]) -> PublicKey {
    let xs: Vec<Scalar<Curve>> = points
        .iter()
        .map(|(j, _)| Scalar::from(u32::from(*j) + 1))
        .collect();
    let mut acc = Point::<Curve>::zero();
    for (k, (_, pk)) in points.iter().enumerate() {
        let mut num = Scalar::<Curve>::one();
        let mut den = Scalar::<Curve>::one();
        for (m, xm) in xs.iter().enumerate() {
            if m != k {
                num *= xm;
                den *= *xm - xs[k];
            }
        }
        let lambda = num * den.invert().expect("distinct points");
        let x = Point::<Curve>::from_bytes(pk.serialize()).expect("point");
        acc += x * lambda;
    }
    PublicKey::from_slice(&acc.to_bytes(true)).expect("non-zero")
}

fn bip32_child(xpub: &bitcoin::bip32::Xpub, path: &[u32]) -> PublicKey {
    let path: DerivationPath = path
        .iter()
        .map(|&i| ChildNumber::from_normal_idx(i).expect("normal index"))
        .collect::<Vec<_>>()
        .into();
    xpub.derive_pub(&Secp256k1::verification_only(), &path)
        .expect("derive")
        .public_key
}

// ---------------------------------------------------------------------------------------
// FROST helpers

fn frost_keygen(n: u16, t: u16) -> Vec<FrostKeyShare> {
    let eid = eid("reshare-frost", ProtocolKind::FrostKeygen, t, n);
    sim::run::<FrostKeygenMsg, _>(n, |i, party| async move {
        frost::keygen(party, &eid, i, n, t).await
    })
    .expect("simulation")
    .into_vec()
    .into_iter()
    .map(|r| r.expect("keygen"))
    .collect()
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

/// BIP-86 output key computed with the `bitcoin` crate only, from the xpub.
fn output_key(info: &PublicKeyInfo, path: &[u32]) -> bitcoin::key::TweakedPublicKey {
    let secp = Secp256k1::verification_only();
    let child = bip32_child(&info.xpub(NetworkKind::Test).expect("hd"), path);
    child.x_only_public_key().0.tap_tweak(&secp, None).0
}

/// FROST-signs a Taproot key spend with `shares` (one per signer, any generation) and
/// returns every signer's result.
fn frost_sign(
    shares: &[&FrostKeyShare],
    path: &[u32],
    sighash: &[u8; 32],
) -> Vec<Result<secp256k1::schnorr::Signature, signer_protocol::ProtocolError>> {
    let signers: Vec<u16> = shares.iter().map(|s| s.index()).collect();
    let t = u16::try_from(shares.len()).expect("small");
    sim::run::<FrostSignMsg, _>(t, |pos, party| {
        let share = shares[usize::from(pos)];
        let signers = &signers;
        async move {
            let ok = InputPermit::for_tests_only(0, *sighash);
            frost::sign(party, pos, signers, share, path, sighash, &ok).await
        }
    })
    .expect("simulation")
    .into_vec()
}

/// FROST signing by `shares` succeeds and verifies against the key of `info` (computed
/// independently from its xpub).
fn assert_frost_signs(shares: &[&FrostKeyShare], info: &PublicKeyInfo) {
    let path = [1u32, 4];
    let key = output_key(info, &path);
    let sighash = taproot_sighash(key);
    for sig in frost_sign(shares, &path, &sighash) {
        let sig = sig.expect("frost signing");
        Secp256k1::verification_only()
            .verify_schnorr(
                &sig,
                &secp256k1::Message::from_digest(sighash),
                &key.to_x_only_public_key(),
            )
            .expect("bip-340 signature verifies for the unchanged output key");
    }
}

fn frost_shares(outs: Vec<ReshareOutput>) -> Vec<Option<FrostKeyShare>> {
    outs.into_iter()
        .map(|o| o.into_frost().expect("frost run"))
        .collect()
}

// ---------------------------------------------------------------------------------------
// ECDSA helpers

fn ecdsa_keygen(n: u16, t: u16) -> Vec<EcdsaIncompleteShare> {
    let eid = eid("reshare-ecdsa", ProtocolKind::EcdsaKeygen, t, n);
    sim::run::<EcdsaKeygenMsg, _>(n, |i, party| async move {
        ecdsa::keygen(party, &eid, i, n, t, None).await
    })
    .expect("simulation")
    .into_vec()
    .into_iter()
    .map(|r| r.expect("keygen"))
    .collect()
}

/// Aux info for `n` parties (test-only primes `0..n`), every party on its own thread over
/// the channel delivery. Aux info does not depend on the key: one set serves every key
/// (old, refreshed, reshared) of the same party count and indexes.
fn make_aux(n: u16) -> Vec<EcdsaAuxInfo> {
    std::thread::spawn(move || {
        tokio::runtime::Runtime::new()
            .expect("runtime")
            .block_on(async move {
                let eid_a = eid("reshare-aux", ProtocolKind::EcdsaAuxInfo, n, n);
                all_ok(
                    run_over_channels::<EcdsaAuxMsg, _, _, _>(
                        ProtocolKind::EcdsaAuxInfo,
                        n,
                        None,
                        Duration::from_secs(900),
                        move |i, party| async move {
                            ecdsa::aux_info(party, &eid_a, i, n, test_primes(i), None).await
                        },
                    )
                    .await,
                )
            })
    })
    .join()
    .expect("aux info thread")
}

static AUX5: OnceLock<Vec<EcdsaAuxInfo>> = OnceLock::new();
static AUX6: OnceLock<Vec<EcdsaAuxInfo>> = OnceLock::new();

fn aux5() -> &'static [EcdsaAuxInfo] {
    AUX5.get_or_init(|| make_aux(5))
}

fn aux6() -> &'static [EcdsaAuxInfo] {
    AUX6.get_or_init(|| make_aux(6))
}

fn complete(share: &EcdsaIncompleteShare, aux: &[EcdsaAuxInfo]) -> EcdsaKeyShare {
    EcdsaKeyShare::from_parts(share, &aux[usize::from(share.index())]).expect("share + aux")
}

/// P2WPKH spend of an output locked to `pk`, and its BIP-143 message.
fn p2wpkh_message(pk: PublicKey) -> (SighashMessage, [u8; 32]) {
    let spk = ScriptBuf::new_p2wpkh(&CompressedPublicKey(pk).wpubkey_hash());
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

/// Full CGGMP24 signing by `shares` (one per signer) of a P2WPKH spend of the child at
/// `path` of `info`'s key (from its xpub); every signature must verify with libsecp256k1.
fn assert_ecdsa_signs(shares: &[&EcdsaKeyShare], info: &PublicKeyInfo) {
    let path = [0u32, 3];
    let child = bip32_child(&info.xpub(NetworkKind::Test).expect("hd"), &path);
    let (msg, sighash) = p2wpkh_message(child);
    let signers: Vec<u16> = shares.iter().map(|s| s.index()).collect();
    let t = u16::try_from(shares.len()).expect("small");
    let eid_s = eid("reshare-sign", ProtocolKind::EcdsaSign, t, t);
    let sigs = sim::run::<EcdsaSignMsg, _>(t, |pos, party| {
        let share = shares[usize::from(pos)];
        let signers = &signers;
        async move {
            let ok = InputPermit::for_tests_only(0, msg.sighash());
            ecdsa::sign(party, &eid_s, pos, signers, share, &path, &msg, &ok, None).await
        }
    })
    .expect("simulation")
    .into_vec();
    for s in sigs {
        let s = s.expect("ecdsa signing");
        Secp256k1::verification_only()
            .verify_ecdsa(&secp256k1::Message::from_digest(sighash), &s, &child)
            .expect("ecdsa signature verifies for the unchanged child key");
    }
}

fn ecdsa_shares(outs: Vec<ReshareOutput>) -> Vec<Option<EcdsaIncompleteShare>> {
    outs.into_iter()
        .map(|o| o.into_ecdsa().expect("ecdsa run"))
        .collect()
}

/// 3-of-5 roles with dealer set {0, 2, 4}, kept indexes, plus a new node with index 5.
const GROW_TO_SIX: [Role; 6] = [
    kept(0, true, 0),
    kept(1, false, 1),
    kept(2, true, 2),
    kept(3, false, 3),
    kept(4, true, 4),
    joining(5),
];

// ---------------------------------------------------------------------------------------
// 1. 3-of-5 -> 4-of-6

#[test]
fn frost_3_of_5_reshared_to_4_of_6_keeps_key_chain_code_xpub_and_the_new_set_signs() {
    let old = frost_keygen(5, 3);
    let info = PublicKeyInfo::from_frost(&old[0]).expect("key info");
    let plan = plan(KeyKind::Frost, info.clone(), 4, 6, &GROW_TO_SIX);
    assert!(!plan.setup.is_refresh());
    let outs = plan.run_ok(|i| OldShare::Frost(&old[usize::from(i)]));
    assert_same_key(&info, &plan, &outs, 4, 6);
    let new: Vec<FrostKeyShare> = frost_shares(outs)
        .into_iter()
        .map(|s| s.expect("every participant receives"))
        .collect();
    for (j, s) in new.iter().enumerate() {
        assert_eq!(usize::from(s.index()), j);
        assert_eq!((s.threshold(), s.parties()), (4, 6));
        assert_eq!(s.public_key().serialize(), old[0].public_key().serialize());
        assert_eq!(s.chain_code(), old[0].chain_code());
        assert_eq!(
            s.output_key(&[0, 9]).expect("key"),
            old[3].output_key(&[0, 9]).expect("key")
        );
    }
    // the newcomer and three kept nodes sign for the unchanged Taproot output key
    assert_frost_signs(&[&new[5], &new[1], &new[3], &new[0]], &info);
    // three shares are no longer enough (threshold is 4 now)
    let shares_pub = plan_public_shares(&new);
    assert_ne!(
        interpolate(&shares_pub[..3]),
        info.public_key(),
        "three 4-of-6 shares do not determine the key"
    );
    assert_eq!(interpolate(&shares_pub[..4]), info.public_key());
}

/// (index, public share) of every new FROST share, from the shares' own key info.
fn plan_public_shares(shares: &[FrostKeyShare]) -> Vec<(u16, PublicKey)> {
    let info = PublicKeyInfo::from_frost(&shares[0]).expect("info");
    (0u16..).zip(info.public_shares()).collect()
}

#[test]
fn ecdsa_3_of_5_reshared_to_4_of_6_keeps_key_and_the_new_set_signs_after_aux_info() {
    let old = ecdsa_keygen(5, 3);
    let info = PublicKeyInfo::from_ecdsa_incomplete(&old[0]).expect("key info");
    let plan = plan(KeyKind::Ecdsa, info.clone(), 4, 6, &GROW_TO_SIX);
    // the old set holds shares without aux info here: dealing needs only the core share
    let outs = plan.run_ok(|i| OldShare::EcdsaIncomplete(&old[usize::from(i)]));
    assert_same_key(&info, &plan, &outs, 4, 6);
    let new: Vec<EcdsaIncompleteShare> = ecdsa_shares(outs)
        .into_iter()
        .map(|s| s.expect("every participant receives"))
        .collect();
    for (j, s) in new.iter().enumerate() {
        assert_eq!(usize::from(s.index()), j);
        assert_eq!((s.threshold(), s.parties()), (4, 6));
        assert_eq!(s.public_key().serialize(), old[0].public_key().serialize());
        assert_eq!(s.chain_code(), old[0].chain_code());
        assert_eq!(s.xpub(NetworkKind::Main), old[0].xpub(NetworkKind::Main));
        assert_eq!(
            s.derive_public_key(&[0, 3]).expect("child"),
            old[1].derive_public_key(&[0, 3]).expect("child")
        );
    }
    // the new set runs aux-info generation for its 6 parties, then 4 of them sign
    let aux = aux6();
    let complete_new: Vec<EcdsaKeyShare> = new.iter().map(|s| complete(s, aux)).collect();
    assert_ecdsa_signs(
        &[
            &complete_new[5],
            &complete_new[0],
            &complete_new[3],
            &complete_new[2],
        ],
        &info,
    );
}

// ---------------------------------------------------------------------------------------
// 2. remove and replace a node

#[test]
fn removing_a_node_5_to_4_keeps_the_key_the_leaving_dealer_gets_nothing_and_four_sign() {
    // old 4 leaves but is one of the dealers; dealer set {1, 3, 4}
    let roles = [
        kept(0, false, 0),
        kept(1, true, 1),
        kept(2, false, 2),
        kept(3, true, 3),
        leaving(4),
    ];
    let old = frost_keygen(5, 3);
    let info = PublicKeyInfo::from_frost(&old[0]).expect("info");
    let plan = plan(KeyKind::Frost, info.clone(), 3, 4, &roles);
    let outs = plan.run_ok(|i| OldShare::Frost(&old[usize::from(i)]));
    assert_same_key(&info, &plan, &outs, 3, 4);
    let new = frost_shares(outs);
    assert!(new[4].is_none(), "the removed node receives nothing");
    let new: Vec<FrostKeyShare> = new.into_iter().flatten().collect();
    assert_eq!(new.len(), 4);
    assert_frost_signs(&[&new[0], &new[2], &new[3]], &info);

    // the same for an ECDSA key (share level: same key, 3-of-4, valid sharing)
    let old = ecdsa_keygen(5, 3);
    let info = PublicKeyInfo::from_ecdsa_incomplete(&old[0]).expect("info");
    let plan = self::plan(KeyKind::Ecdsa, info.clone(), 3, 4, &roles);
    let outs = plan.run_ok(|i| OldShare::EcdsaIncomplete(&old[usize::from(i)]));
    assert_same_key(&info, &plan, &outs, 3, 4);
    let new_info = outs[0].key_info().clone();
    let new = ecdsa_shares(outs);
    assert!(new[4].is_none());
    let pubs: Vec<(u16, PublicKey)> = (0u16..).zip(new_info.public_shares()).collect();
    assert_eq!(interpolate(&[pubs[0], pubs[2], pubs[3]]), info.public_key());
    assert_eq!(interpolate(&[pubs[1], pubs[2], pubs[3]]), info.public_key());
}

/// Old 2 leaves (and deals), a newcomer takes new index 2 and only receives.
const REPLACE_TWO: [Role; 6] = [
    kept(0, true, 0),
    kept(1, false, 1),
    leaving(2),
    kept(3, true, 3),
    kept(4, false, 4),
    joining(2),
];

#[test]
fn replacing_a_node_gives_the_newcomer_a_share_and_the_set_signs_with_it() {
    let old = frost_keygen(5, 3);
    let info = PublicKeyInfo::from_frost(&old[0]).expect("info");
    let plan = plan(KeyKind::Frost, info.clone(), 3, 5, &REPLACE_TWO);
    let outs = plan.run_ok(|i| OldShare::Frost(&old[usize::from(i)]));
    assert_same_key(&info, &plan, &outs, 3, 5);
    let mut new = frost_shares(outs);
    assert!(new[2].is_none(), "the leaving node receives nothing");
    let newcomer = new[5].take().expect("the newcomer receives");
    assert_eq!(newcomer.index(), 2);
    let kept0 = new[0].take().expect("share");
    let kept4 = new[4].take().expect("share");
    assert_frost_signs(&[&newcomer, &kept4, &kept0], &info);

    // ECDSA: the new set is again 5 parties; in this test the newcomer reuses the aux
    // info of index 2 (in production the new set runs aux-info generation)
    let old = ecdsa_keygen(5, 3);
    let info = PublicKeyInfo::from_ecdsa_incomplete(&old[0]).expect("info");
    let plan = self::plan(KeyKind::Ecdsa, info.clone(), 3, 5, &REPLACE_TWO);
    let outs = plan.run_ok(|i| OldShare::EcdsaIncomplete(&old[usize::from(i)]));
    assert_same_key(&info, &plan, &outs, 3, 5);
    let mut new = ecdsa_shares(outs);
    let newcomer = new[5].take().expect("the newcomer receives");
    let kept1 = new[1].take().expect("share");
    let kept3 = new[3].take().expect("share");
    let aux = aux5();
    assert_ecdsa_signs(
        &[
            &complete(&newcomer, aux),
            &complete(&kept3, aux),
            &complete(&kept1, aux),
        ],
        &info,
    );
}

// ---------------------------------------------------------------------------------------
// 3. refresh

/// Same 5 nodes, same indexes, t = 3; dealers {0, 1, 2}.
const REFRESH: [Role; 5] = [
    kept(0, true, 0),
    kept(1, true, 1),
    kept(2, true, 2),
    kept(3, false, 3),
    kept(4, false, 4),
];

#[test]
fn frost_refresh_new_shares_sign_and_an_old_share_mixed_with_new_ones_does_not() {
    let old = frost_keygen(5, 3);
    let info = PublicKeyInfo::from_frost(&old[0]).expect("info");
    let plan = plan(KeyKind::Frost, info.clone(), 3, 5, &REFRESH);
    // the refresh helper builds the same setup
    let keys: Vec<[u8; 32]> = plan.ids.iter().map(key_of).collect();
    let helper = ReshareSetup::refresh(KeyKind::Frost, info.clone(), &keys, &[0, 1, 2])
        .expect("refresh setup");
    assert_eq!(helper.digest(), plan.setup.digest());
    assert!(plan.setup.is_refresh());
    let outs = plan.run_ok(|i| OldShare::Frost(&old[usize::from(i)]));
    assert_same_key(&info, &plan, &outs, 3, 5);
    let new_info = outs[0].key_info().clone();
    let new: Vec<FrostKeyShare> = frost_shares(outs).into_iter().flatten().collect();
    assert_frost_signs(&[&new[0], &new[3], &new[4]], &info);

    // share level: every public share changed; the new ones interpolate to the key, a mix
    // of one old and two new ones does not
    let old_pubs = info.public_shares();
    let new_pubs = new_info.public_shares();
    for j in 0..5 {
        assert_ne!(old_pubs[j], new_pubs[j], "share {j} was not refreshed");
    }
    assert_eq!(
        interpolate(&[(0, new_pubs[0]), (3, new_pubs[3]), (4, new_pubs[4])]),
        info.public_key()
    );
    assert_ne!(
        interpolate(&[(0, old_pubs[0]), (3, new_pubs[3]), (4, new_pubs[4])]),
        info.public_key()
    );

    // signing level: old share 0 with new shares 3 and 4 yields no valid signature
    let path = [1u32, 4];
    let key = output_key(&info, &path);
    let sighash = taproot_sighash(key);
    for r in frost_sign(&[&old[0], &new[3], &new[4]], &path, &sighash) {
        // givre's aggregation (or this crate's libsecp256k1 check) refuses the result
        let err = r.expect_err("a mixed old/new signer set must not produce a signature");
        assert!(err.to_string().contains("signature"), "{err}");
    }
    // the old shares are unchanged by the run (they still sign together)
    assert_frost_signs(&[&old[0], &old[3], &old[4]], &info);
}

#[test]
fn ecdsa_refresh_new_shares_sign_and_an_old_share_does_not_combine_with_new_ones() {
    let old = ecdsa_keygen(5, 3);
    let aux = aux5();
    let old_complete: Vec<EcdsaKeyShare> = old.iter().map(|s| complete(s, aux)).collect();
    let info = PublicKeyInfo::from_ecdsa(&old_complete[0]).expect("info");
    let plan = plan(KeyKind::Ecdsa, info.clone(), 3, 5, &REFRESH);
    // dealers deal from their complete shares (what the node holds)
    let outs = plan.run_ok(|i| OldShare::Ecdsa(&old_complete[usize::from(i)]));
    assert_same_key(&info, &plan, &outs, 3, 5);
    let new_info = outs[0].key_info().clone();
    let new: Vec<EcdsaKeyShare> = ecdsa_shares(outs)
        .into_iter()
        .map(|s| complete(&s.expect("share"), aux))
        .collect();
    assert_ecdsa_signs(&[&new[1], &new[2], &new[4]], &info);

    let old_pubs = info.public_shares();
    let new_pubs = new_info.public_shares();
    for j in 0..5 {
        assert_ne!(old_pubs[j], new_pubs[j], "share {j} was not refreshed");
    }
    assert_eq!(
        interpolate(&[(1, new_pubs[1]), (2, new_pubs[2]), (4, new_pubs[4])]),
        info.public_key()
    );
    assert_ne!(
        interpolate(&[(1, old_pubs[1]), (2, new_pubs[2]), (4, new_pubs[4])]),
        info.public_key(),
        "an old share combined with new ones does not interpolate to the key"
    );
}

// ---------------------------------------------------------------------------------------
// 4.-7. cheating dealers

/// Asserts every participant aborted and named exactly `culprit`; returns the errors.
fn assert_all_blame(
    results: Vec<Result<ReshareOutput, ReshareError>>,
    culprit: u16,
) -> Vec<ReshareError> {
    results
        .into_iter()
        .enumerate()
        .map(|(r, res)| {
            let err = res.expect_err("the run must abort");
            assert_eq!(err.culprits(), vec![culprit], "participant {r}: {err}");
            assert!(
                err.to_string().contains(&format!("party {culprit}")),
                "{err}"
            );
            err
        })
        .collect()
}

/// The evidence of every fault against `culprit` verifies, to the given kind.
fn assert_evidence(plan: &Plan, err: &ReshareError, culprit: u16, kind: &FaultKind) {
    let mut checked = 0;
    for f in err.faults().iter().filter(|f| f.culprit == culprit) {
        let ev = f
            .evidence
            .as_ref()
            .expect("a provable fault carries evidence");
        let (who, what) = ev
            .verify(&plan.eid, &plan.setup)
            .expect("evidence verifies");
        assert_eq!((who, &what), (culprit, kind));
        checked += 1;
    }
    assert!(checked > 0, "no fault against {culprit}: {err}");
}

#[test]
fn wrong_sub_share_is_refused_blamed_with_verifiable_complaint_and_old_shares_still_sign() {
    let old = frost_keygen(5, 3);
    let before: Vec<Vec<u8>> = old
        .iter()
        .map(|s| s.to_bytes().expect("enc").to_vec())
        .collect();
    let info = PublicKeyInfo::from_frost(&old[0]).expect("info");
    let plan = plan(KeyKind::Frost, info.clone(), 4, 6, &GROW_TO_SIX);
    // dealer at run index 2 sends the newcomer (run index 5) a wrong, signed sub-share
    let (dealer, victim) = (2u16, 5u16);
    let results = plan.run_sim(
        |i| OldShare::Frost(&old[usize::from(i)]),
        &[(dealer, DealerFault::WrongSubShare { receiver: victim })],
    );
    let errors = assert_all_blame(results, dealer);
    let kind = FaultKind::InvalidSubShare { receiver: victim };
    // the victim found it itself; everybody else verified its complaint
    for err in &errors {
        assert_evidence(&plan, err, dealer, &kind);
    }
    // the evidence is bound to the victim: claiming it was sent to someone else fails
    let ev = errors[usize::from(victim)].faults()[0]
        .evidence
        .clone()
        .expect("evidence");
    let Evidence::InvalidSubShare {
        dealer: d,
        commitments,
        sub_share,
        ..
    } = ev
    else {
        panic!("unexpected evidence {ev:?}");
    };
    let forged = Evidence::InvalidSubShare {
        dealer: d,
        receiver: 3,
        commitments,
        sub_share,
    };
    assert!(forged.verify(&plan.eid, &plan.setup).is_err());
    // nothing was produced and the old shares are untouched and still sign
    let after: Vec<Vec<u8>> = old
        .iter()
        .map(|s| s.to_bytes().expect("enc").to_vec())
        .collect();
    assert_eq!(before, after);
    assert_frost_signs(&[&old[1], &old[2], &old[4]], &info);
}

#[test]
fn ecdsa_wrong_sub_share_aborts_the_run_and_the_old_shares_still_sign() {
    let old = ecdsa_keygen(5, 3);
    let aux = aux5();
    let old_complete: Vec<EcdsaKeyShare> = old.iter().map(|s| complete(s, aux)).collect();
    let info = PublicKeyInfo::from_ecdsa(&old_complete[0]).expect("info");
    let plan = plan(KeyKind::Ecdsa, info.clone(), 3, 5, &REFRESH);
    let results = plan.run_sim(
        |i| OldShare::Ecdsa(&old_complete[usize::from(i)]),
        &[(1, DealerFault::WrongSubShare { receiver: 4 })],
    );
    for err in assert_all_blame(results, 1) {
        assert_evidence(&plan, &err, 1, &FaultKind::InvalidSubShare { receiver: 4 });
    }
    assert_ecdsa_signs(
        &[&old_complete[0], &old_complete[4], &old_complete[2]],
        &info,
    );
}

#[test]
fn commitments_of_the_wrong_length_are_refused_and_blamed() {
    let old = frost_keygen(5, 3);
    let info = PublicKeyInfo::from_frost(&old[0]).expect("info");
    // t' = 4: a dealer committing to 3 or 5 coefficients (with consistent sub-shares)
    // would silently change the threshold of the new key
    for count in [3u16, 5] {
        let plan = plan(KeyKind::Frost, info.clone(), 4, 6, &GROW_TO_SIX);
        let results = plan.run_sim(
            |i| OldShare::Frost(&old[usize::from(i)]),
            &[(4, DealerFault::CommitmentCount { count })],
        );
        let kind = FaultKind::CommitmentCount {
            expected: 4,
            got: usize::from(count),
        };
        for err in assert_all_blame(results, 4) {
            assert_evidence(&plan, &err, 4, &kind);
            assert!(err.to_string().contains("exactly 4"), "{err}");
        }
    }
}

#[test]
fn constant_commitment_not_matching_the_old_public_share_is_refused_and_blamed() {
    let old = ecdsa_keygen(5, 3);
    let info = PublicKeyInfo::from_ecdsa_incomplete(&old[0]).expect("info");
    let plan = plan(KeyKind::Ecdsa, info, 4, 6, &GROW_TO_SIX);
    // dealer 0 shares λ·x + 1 with consistent commitments and sub-shares
    let results = plan.run_sim(
        |i| OldShare::EcdsaIncomplete(&old[usize::from(i)]),
        &[(0, DealerFault::WrongConstantTerm)],
    );
    for err in assert_all_blame(results, 0) {
        assert_evidence(&plan, &err, 0, &FaultKind::WrongConstantTerm);
    }
}

/// A message in flight: (sender, recipient, arrives as, message).
type InFlight = (u16, u16, MsgType, ReshareMsg);

/// One copy per recipient, flagged as the transport would (broadcast to every other
/// participant, p2p to one).
fn fan_out(from: u16, out: Outgoing, n: u16) -> Vec<InFlight> {
    match out.recipient {
        None => (0..n)
            .filter(|&r| r != from)
            .map(|r| (from, r, MsgType::Broadcast, out.msg.clone()))
            .collect(),
        Some(r) => vec![(from, r, MsgType::P2p, out.msg)],
    }
}

#[test]
fn equivocating_dealer_is_caught_in_the_echo_round() {
    let old = frost_keygen(5, 3);
    let info = PublicKeyInfo::from_frost(&old[0]).expect("info");
    let plan = plan(KeyKind::Frost, info, 4, 6, &GROW_TO_SIX);
    let n = plan.setup.run_parties();
    let (dealer, victim) = (2u16, 3u16);
    let old_share = |i: u16| OldShare::Frost(&old[usize::from(i)]);
    let mut parties = plan.parties(old_share, &[]);
    // a second instance of the same dealer deals another (self-consistent) polynomial for
    // the same secret; the victim sees only that one, everybody else only the first
    let mut twin =
        ReshareParty::new(&plan.eid, plan.setup.clone(), dealer, Some(old_share(2))).expect("twin");
    let mut queue: VecDeque<InFlight> = VecDeque::new();
    for m in twin
        .start(&plan.ids[usize::from(dealer)])
        .expect("twin deals")
    {
        queue.extend(fan_out(dealer, m, n).into_iter().filter(|f| f.1 == victim));
    }
    for (r, p) in (0u16..).zip(parties.iter_mut()) {
        for m in p.start(&plan.ids[usize::from(r)]).expect("start") {
            queue.extend(
                fan_out(r, m, n)
                    .into_iter()
                    .filter(|f| !(r == dealer && f.1 == victim)),
            );
        }
    }
    let mut victim_echo = None;
    while let Some((from, to, ty, msg)) = queue.pop_front() {
        if let (true, ReshareMsg::Echo(e)) = (from == victim, &msg) {
            victim_echo.get_or_insert_with(|| e.clone());
        }
        let outs = parties[usize::from(to)]
            .handle(&plan.ids[usize::from(to)], from, ty, msg)
            .expect("handle");
        for m in outs {
            queue.extend(fan_out(to, m, n));
        }
    }
    let victim_echo = victim_echo.expect("the victim echoed");
    assert!(
        victim_echo.complaints().is_empty(),
        "the victim's local checks passed: only the echo round can reveal this"
    );
    for (r, p) in (0u16..).zip(parties) {
        assert!(p.is_finished(), "participant {r} got every message");
        let err = p.finish().expect_err("the run must abort");
        if r == dealer {
            continue; // the cheater's own verdict does not matter
        }
        assert_eq!(err.culprits(), vec![dealer], "participant {r}: {err}");
        assert_evidence(&plan, &err, dealer, &FaultKind::Equivocation);
    }
}

// ---------------------------------------------------------------------------------------
// setup, transport and hygiene

#[test]
fn setup_refuses_inconsistent_roles() {
    let old = frost_keygen(5, 3);
    let info = PublicKeyInfo::from_frost(&old[0]).expect("info");
    let ids = identities(6);
    let k = |i: usize| key_of(&ids[i]);
    let ok = |roles: Vec<Participant>, t: u16, n: u16| {
        ReshareSetup::new(KeyKind::Frost, info.clone(), t, n, roles)
    };
    // two dealers only (old threshold is 3)
    assert!(ok(
        vec![
            Participant::dealer_and_receiver(k(0), 0, 0),
            Participant::dealer_and_receiver(k(1), 1, 1),
            Participant::receiver_only(k(2), 2),
        ],
        2,
        3
    )
    .is_err());
    // new index 1 missing, index 0 twice
    assert!(ok(
        vec![
            Participant::dealer_and_receiver(k(0), 0, 0),
            Participant::dealer_and_receiver(k(1), 1, 0),
            Participant::dealer_only(k(2), 2),
        ],
        2,
        2
    )
    .is_err());
    // threshold 1 and threshold above n'
    let base = vec![
        Participant::dealer_and_receiver(k(0), 0, 0),
        Participant::dealer_and_receiver(k(1), 1, 1),
        Participant::dealer_only(k(2), 2),
    ];
    assert!(ok(base.clone(), 1, 2).is_err());
    assert!(ok(base.clone(), 3, 2).is_err());
    assert!(ok(base.clone(), 2, 2).is_ok());
    // duplicate identity key
    let mut dup = base;
    dup[2].identity_key = k(0);
    assert!(ok(dup, 2, 2).is_err());
}

#[test]
fn a_dealer_cannot_deal_from_a_share_of_another_key_or_index() {
    let old = frost_keygen(5, 3);
    let other = frost_keygen(5, 3);
    let info = PublicKeyInfo::from_frost(&old[0]).expect("info");
    let plan = plan(KeyKind::Frost, info, 3, 5, &REFRESH);
    let setup = || plan.setup.clone();
    assert!(ReshareParty::new(&plan.eid, setup(), 0, Some(OldShare::Frost(&other[0]))).is_err());
    assert!(ReshareParty::new(&plan.eid, setup(), 0, Some(OldShare::Frost(&old[1]))).is_err());
    assert!(ReshareParty::new(&plan.eid, setup(), 0, None).is_err());
    let ecdsa = ecdsa_keygen(3, 2);
    assert!(ReshareParty::new(
        &plan.eid,
        setup(),
        0,
        Some(OldShare::EcdsaIncomplete(&ecdsa[0]))
    )
    .is_err());
    assert!(ReshareParty::new(&plan.eid, setup(), 0, Some(OldShare::Frost(&old[0]))).is_ok());
    // a signer whose key is not this participant's is refused before anything is sent
    let mut p =
        ReshareParty::new(&plan.eid, setup(), 0, Some(OldShare::Frost(&old[0]))).expect("party");
    assert!(p.start(&plan.ids[1]).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reshare_runs_over_the_channel_delivery_and_names_the_sender_of_garbage() {
    use bytes::Bytes;
    use signer_protocol::local::Tamper;
    use std::sync::Arc;

    let old = Arc::new(frost_keygen(5, 3));
    let info = PublicKeyInfo::from_frost(&old[0]).expect("info");
    let plan = Arc::new(plan(KeyKind::Frost, info.clone(), 4, 6, &GROW_TO_SIX));
    let parties = |plan: Arc<Plan>, old: Arc<Vec<FrostKeyShare>>| {
        move |i: u16, party: ChanParty<ReshareMsg>| {
            let (plan, old) = (plan.clone(), old.clone());
            async move {
                let role = plan.roles[usize::from(i)];
                let share = role
                    .deals
                    .then(|| OldShare::Frost(&old[usize::from(role.old.expect("old"))]));
                let state = ReshareParty::new(&plan.eid, plan.setup.clone(), i, share)
                    .map_err(|e| signer_protocol::ProtocolError::InvalidArgument(e.to_string()))?;
                Ok(reshare::run(party, state, &plan.ids[usize::from(i)]).await)
            }
        }
    };
    let outs = all_ok(
        run_over_channels::<ReshareMsg, _, _, _>(
            ProtocolKind::FrostKeygen,
            6,
            None,
            Duration::from_secs(60),
            parties(plan.clone(), old.clone()),
        )
        .await,
    );
    let outs: Vec<ReshareOutput> = outs
        .into_iter()
        .map(|r| r.expect("reshare over channels"))
        .collect();
    assert_same_key(&info, &plan, &outs, 4, 6);

    // garbage from run index 1 to run index 3 is blamed on 1 by its receiver
    let tamper: Tamper = Arc::new(|s, r, _t: MsgType, _p: &Bytes| {
        (s == 1 && r == 3).then(|| Bytes::from_static(&[1, 0xff, 0xff]))
    });
    let plan2 = Arc::new(self::plan(KeyKind::Frost, info, 4, 6, &GROW_TO_SIX));
    let res = run_observe::<ReshareMsg, _, _, _>(
        ProtocolKind::FrostKeygen,
        6,
        Some(tamper),
        3,
        parties(plan2, old),
    )
    .await
    .expect("the observer's run returns");
    let err = res.expect_err("party 3 must abort");
    assert!(
        matches!(err, ReshareError::MalformedMessage { party: 1, .. }),
        "{err}"
    );
}

#[test]
fn debug_output_of_reshare_secrets_is_redacted() {
    let old = frost_keygen(5, 3);
    let info = PublicKeyInfo::from_frost(&old[0]).expect("info");
    let plan = plan(KeyKind::Frost, info, 3, 5, &REFRESH);
    let mut p = ReshareParty::new(
        &plan.eid,
        plan.setup.clone(),
        0,
        Some(OldShare::Frost(&old[0])),
    )
    .expect("party");
    let outs = p.start(&plan.ids[0]).expect("start");
    let sub_share = outs
        .iter()
        .find(|o| matches!(o.msg, ReshareMsg::SubShare(_)))
        .expect("a sub-share");
    let encoded = signer_protocol::codec::encode_message(&sub_share.msg).expect("encode");
    let value: ciborium::Value = ciborium::from_reader(&encoded[1..]).expect("cbor");
    // the secret is the byte string under the key "value"
    fn find_value(v: &ciborium::Value) -> Option<Vec<u8>> {
        match v {
            ciborium::Value::Map(m) => m.iter().find_map(|(k, x)| match (k, x) {
                (ciborium::Value::Text(t), ciborium::Value::Bytes(b)) if t == "value" => {
                    Some(b.clone())
                }
                _ => find_value(x),
            }),
            _ => None,
        }
    }
    let secret = hex::encode(find_value(&value).expect("the sub-share value is in the message"));
    assert_eq!(secret.len(), 64);
    let debug = format!("{sub_share:?} {p:?} {:?}", plan.setup);
    assert!(debug.contains("redacted"), "{debug}");
    for window in [&secret[..16], &secret[16..32], &secret[48..]] {
        assert!(
            !debug.contains(window),
            "debug output leaks the sub-share: {debug}"
        );
    }
}

#[test]
fn public_key_info_round_trips_and_is_bounded() {
    let old = frost_keygen(5, 3);
    let info = PublicKeyInfo::from_frost(&old[2]).expect("info");
    let bytes = info.to_bytes().expect("encode");
    let back = PublicKeyInfo::from_bytes(&bytes).expect("decode");
    assert_eq!(back, info);
    assert_eq!(back.digest(), info.digest());
    assert!(PublicKeyInfo::from_bytes(&bytes[..bytes.len() - 1]).is_err());
    // public shares that do not interpolate to the key are refused by validation
    let mut other = PublicKeyInfo::from_frost(&frost_keygen(5, 3)[0])
        .expect("info")
        .to_bytes()
        .expect("encode");
    // same length encodings: splice the other key's public key into this key info
    let pk = info.public_key().serialize();
    let pk_other = PublicKeyInfo::from_bytes(&other)
        .expect("decode")
        .public_key()
        .serialize();
    let pos = other
        .windows(33)
        .position(|w| w == pk_other)
        .expect("public key bytes in the encoding");
    other[pos..pos + 33].copy_from_slice(&pk);
    assert!(PublicKeyInfo::from_bytes(&other).is_err());
    assert!(PublicKeyInfo::from_bytes(&vec![1u8; reshare::MAX_MESSAGE_SIZE + 1]).is_err());
}
