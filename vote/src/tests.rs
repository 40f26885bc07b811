//! Tests of the pure vote logic (the PostgreSQL-backed intake is tested in
//! `intake_pg.rs`).

use bitcoin::hashes::Hash;
use bitcoin::Txid;
use proptest::prelude::*;
use ring::signature::Ed25519KeyPair;
use uuid::Uuid;

use super::*;

fn key(seed: u8) -> Ed25519KeyPair {
    Ed25519KeyPair::from_seed_unchecked(&[seed; 32]).expect("any 32-byte seed is a valid key")
}

fn pub_key(seed: u8) -> [u8; 32] {
    key(seed).vote_public_key()
}

const TX: Uuid = Uuid::from_bytes([9; 16]);

fn subject() -> VoteSubject {
    VoteSubject {
        transaction_id: TX,
        round_no: 1,
        txid: Txid::from_byte_array([1; 32]),
        sighashes: vec![[0x11; 32], [0x22; 32]],
        policy_hash: [0xab; 32],
    }
}

fn body(voter: &str, decision: VoteDecision) -> VoteBody {
    let s = subject();
    VoteBody {
        transaction_id: s.transaction_id,
        round_no: s.round_no,
        txid: s.txid,
        sighashes: s.sighashes,
        policy_hash: s.policy_hash,
        decision,
        reasons: match decision {
            VoteDecision::Approve => Vec::new(),
            VoteDecision::Reject => vec!["per_tx_limit_exceeded".to_owned()],
        },
        voter: voter.to_owned(),
        deadline_unix: 1_700_000_600,
    }
}

/// Node `node-<i>` signs with the key of seed `i`.
fn vote(i: u8, decision: VoteDecision) -> SignedVote {
    SignedVote::sign(body(&format!("node-{i}"), decision), &key(i)).expect("valid body")
}

fn book(nodes: &[u8]) -> VoteKeyBook {
    VoteKeyBook::from_pinned(nodes.iter().map(|i| (format!("node-{i}"), pub_key(*i))))
}

/// Wire form of a signed vote with an arbitrary signature over arbitrary bytes.
fn wire(body_bytes: &[u8], signature: &[u8; 64]) -> Vec<u8> {
    let mut v = (body_bytes.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(body_bytes);
    v.extend_from_slice(signature);
    v
}

/// A named change to a valid body.
type Mutation = (&'static str, Box<dyn Fn(&mut VoteBody)>);

fn sig_of(k: &Ed25519KeyPair, msg: &[u8]) -> [u8; 64] {
    k.sign_vote_message(msg)
}

// --- encoding -----------------------------------------------------------------

#[test]
fn vote_body_round_trips_and_decodes_only_its_canonical_encoding() {
    for d in [VoteDecision::Approve, VoteDecision::Reject] {
        let b = body("node-1", d);
        let bytes = b.encode().expect("valid");
        assert_eq!(bytes[0], VOTE_BODY_VERSION);
        let back = VoteBody::decode(&bytes).expect("decodes");
        assert_eq!(back, b);
        assert_eq!(back.encode().expect("valid"), bytes);
    }
}

#[test]
fn signed_vote_round_trips_and_verifies_under_the_voters_key_only() {
    let v = vote(1, VoteDecision::Approve);
    let bytes = v.encode();
    let back = SignedVote::decode(&bytes).expect("decodes");
    assert_eq!(back, v);
    assert_eq!(back.encode(), bytes);
    back.verify(&pub_key(1)).expect("valid signature");
    assert_eq!(back.verify(&pub_key(2)), Err(BadSignature));
}

#[test]
fn the_signature_covers_the_domain_separator_and_the_whole_body() {
    let b = body("node-1", VoteDecision::Approve);
    let bytes = b.encode().expect("valid");
    let k = key(1);
    // The signed message is exactly VOTE_DOMAIN || body.
    let mut msg = VOTE_DOMAIN.to_vec();
    msg.extend_from_slice(&bytes);
    assert_eq!(b.signing_message().expect("valid"), msg);
    let good = SignedVote::decode(&wire(&bytes, &sig_of(&k, &msg))).expect("decodes");
    good.verify(&pub_key(1))
        .expect("domain-separated signature verifies");

    // A signature over the bare body (no domain) does not verify as a vote.
    let bare = SignedVote::decode(&wire(&bytes, &sig_of(&k, &bytes))).expect("decodes");
    assert_eq!(bare.verify(&pub_key(1)), Err(BadSignature));

    // Nor does a signature under another protocol's domain (the key announcement's).
    let mut other = KEY_ANNOUNCE_DOMAIN.to_vec();
    other.extend_from_slice(&bytes);
    let foreign = SignedVote::decode(&wire(&bytes, &sig_of(&k, &other))).expect("decodes");
    assert_eq!(foreign.verify(&pub_key(1)), Err(BadSignature));

    // Nor does a vote-domain signature over a different version tag.
    let mut v2 = b"signer/vote/v2\0".to_vec();
    v2.extend_from_slice(&bytes);
    let wrong_version = SignedVote::decode(&wire(&bytes, &sig_of(&k, &v2))).expect("decodes");
    assert_eq!(wrong_version.verify(&pub_key(1)), Err(BadSignature));
}

/// Asserts that no decodable one-bit change of `v` verifies under voter 1's key,
/// checking each `times` times.
fn no_flipped_bit_verifies(v: &SignedVote, times: usize) {
    let bytes = v.encode();
    for i in 0..bytes.len() {
        for bit in 0..8 {
            let mut m = bytes.clone();
            m[i] ^= 1 << bit;
            if let Ok(d) = SignedVote::decode(&m) {
                for _ in 0..times {
                    assert!(
                        d.verify(&pub_key(1)).is_err(),
                        "flipping bit {bit} of byte {i} still verifies"
                    );
                }
            }
        }
    }
}

#[test]
fn every_flipped_bit_of_a_signed_vote_fails_decoding_or_verification() {
    no_flipped_bit_verifies(&vote(1, VoteDecision::Reject), 1);
}

/// A vote that verified is remembered (`message::verified`), and the memory answers
/// only for exactly that vote under exactly that key: after the original verified
/// (twice, the second time from memory), every flipped bit of it still fails (each
/// checked twice), it fails under another voter's key, and a vote that failed is
/// never remembered.
#[test]
fn a_remembered_verification_accepts_only_the_exact_vote_that_verified() {
    let v = vote(1, VoteDecision::Approve);
    assert_eq!(v.verify(&pub_key(1)), Ok(()));
    assert_eq!(v.verify(&pub_key(1)), Ok(()), "remembered");
    assert_eq!(v.verify(&pub_key(2)), Err(BadSignature));
    assert_eq!(
        v.verify(&pub_key(2)),
        Err(BadSignature),
        "a failure is not remembered"
    );
    no_flipped_bit_verifies(&v, 2);
}

#[test]
fn invalid_bodies_are_refused_on_encode_and_decode() {
    let good = body("node-1", VoteDecision::Reject);
    let cases: Vec<Mutation> = vec![
        ("round 0", Box::new(|b| b.round_no = 0)),
        ("round above i32", Box::new(|b| b.round_no = 1 << 31)),
        ("no sighashes", Box::new(|b| b.sighashes.clear())),
        (
            "too many sighashes",
            Box::new(|b| b.sighashes = vec![[0; 32]; MAX_SIGHASHES + 1]),
        ),
        ("voter upper case", Box::new(|b| b.voter = "Node-1".into())),
        ("voter empty", Box::new(|b| b.voter = String::new())),
        ("voter too long", Box::new(|b| b.voter = "n".repeat(33))),
        (
            "reason newline",
            Box::new(|b| b.reasons = vec!["a\nb".into()]),
        ),
        (
            "reason empty",
            Box::new(|b| b.reasons = vec![String::new()]),
        ),
        (
            "reason too long",
            Box::new(|b| b.reasons = vec!["r".repeat(MAX_REASON_BYTES + 1)]),
        ),
        (
            "too many reasons",
            Box::new(|b| b.reasons = vec!["r".into(); MAX_REASONS + 1]),
        ),
    ];
    for (name, mutate) in cases {
        let mut b = good.clone();
        mutate(&mut b);
        assert!(b.encode().is_err(), "{name} encoded");
        assert!(SignedVote::sign(b, &key(1)).is_err(), "{name} signed");
    }
}

#[test]
fn decoding_refuses_trailing_bytes_unknown_versions_and_tags() {
    let bytes = body("node-1", VoteDecision::Approve)
        .encode()
        .expect("valid");
    let mut trailing = bytes.clone();
    trailing.push(0);
    assert_eq!(
        VoteBody::decode(&trailing),
        Err(VoteCodecError::TrailingBytes { extra: 1 })
    );
    let mut version = bytes.clone();
    version[0] = 2;
    assert!(matches!(
        VoteBody::decode(&version),
        Err(VoteCodecError::UnsupportedVersion { version: 2, .. })
    ));
    // Decision byte: after version, id, round, txid, count, 2 sighashes, policy.
    let at = 1 + 16 + 4 + 32 + 2 + 2 * 32 + 32;
    assert_eq!(bytes[at], 1);
    let mut decision = bytes.clone();
    decision[at] = 3;
    assert!(matches!(
        VoteBody::decode(&decision),
        Err(VoteCodecError::UnknownTag { tag: 3, .. })
    ));
    for cut in 0..bytes.len() {
        assert!(
            VoteBody::decode(&bytes[..cut]).is_err(),
            "prefix {cut} decoded"
        );
    }
}

#[test]
fn the_largest_valid_vote_fits_the_declared_bounds_and_larger_input_is_refused() {
    let mut b = body("n".repeat(MAX_VOTER_BYTES).as_str(), VoteDecision::Reject);
    b.sighashes = vec![[7; 32]; MAX_SIGHASHES];
    b.reasons = vec!["r".repeat(MAX_REASON_BYTES); MAX_REASONS];
    let v = SignedVote::sign(b, &key(1)).expect("largest valid body");
    assert_eq!(v.encode().len(), MAX_SIGNED_VOTE_BYTES);
    let msg = VoteMessage::Vote(v).encode();
    assert_eq!(msg.len(), MAX_VOTE_MESSAGE_BYTES);
    assert!(VoteMessage::decode(&msg).is_ok());

    let too_big = vec![0u8; MAX_SIGNED_VOTE_BYTES + 1];
    assert!(matches!(
        SignedVote::decode(&too_big),
        Err(VoteCodecError::TooLarge { .. })
    ));
    assert!(matches!(
        VoteMessage::decode(&vec![1u8; MAX_VOTE_MESSAGE_BYTES + 1]),
        Err(VoteCodecError::TooLarge { .. })
    ));
    // A declared body length beyond the bound is refused before reading it.
    let mut declared = u32::MAX.to_be_bytes().to_vec();
    declared.extend_from_slice(&[0; 64]);
    assert!(matches!(
        SignedVote::decode(&declared),
        Err(VoteCodecError::TooLarge { .. })
    ));
}

#[test]
fn vote_messages_round_trip_and_unknown_tags_are_refused() {
    let v = VoteMessage::Vote(vote(1, VoteDecision::Approve));
    assert_eq!(VoteMessage::decode(&v.encode()).expect("vote"), v);
    let a = VoteMessage::KeyAnnouncement(
        VoteKeyAnnouncement::new("node-1", &key(1)).expect("valid node id"),
    );
    assert_eq!(VoteMessage::decode(&a.encode()).expect("announcement"), a);
    assert!(matches!(
        VoteMessage::decode(&[9, 0, 0]),
        Err(VoteCodecError::UnknownTag { tag: 9, .. })
    ));
    assert!(VoteMessage::decode(&[]).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn decoding_arbitrary_bytes_never_panics_and_accepts_only_canonical_input(
        data in proptest::collection::vec(any::<u8>(), 0..600)
    ) {
        if let Ok(b) = VoteBody::decode(&data) {
            prop_assert_eq!(b.encode().expect("decoded bodies are valid"), data.clone());
        }
        if let Ok(v) = SignedVote::decode(&data) {
            prop_assert_eq!(v.encode(), data.clone());
        }
        if let Ok(a) = VoteKeyAnnouncement::decode(&data) {
            prop_assert_eq!(a.encode(), data.clone());
        }
        if let Ok(m) = VoteMessage::decode(&data) {
            prop_assert_eq!(m.encode(), data.clone());
        }
    }

    #[test]
    fn decoding_mutated_votes_never_panics_and_mutations_never_verify(
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        cut in proptest::option::of(any::<usize>()),
    ) {
        let original = vote(3, VoteDecision::Reject).encode();
        let mut m = original.clone();
        for (at, byte) in edits {
            let i = at % m.len();
            m[i] = byte;
        }
        if let Some(c) = cut {
            m.truncate(c % (m.len() + 1));
        }
        if let Ok(v) = SignedVote::decode(&m) {
            prop_assert_eq!(v.encode(), m.clone());
            if m != original {
                prop_assert!(v.verify(&pub_key(3)).is_err());
            }
        }
        let _ = VoteMessage::decode(&m);
    }
}

// --- key announcements and pinning --------------------------------------------

#[test]
fn key_announcement_round_trips_and_its_proof_binds_node_and_key() {
    let a = VoteKeyAnnouncement::new("node-1", &key(1)).expect("valid");
    assert_eq!(a.public_key(), &pub_key(1));
    assert!(a.proof_is_valid());
    let bytes = a.encode();
    assert!(bytes.len() <= MAX_KEY_ANNOUNCE_BYTES);
    let back = VoteKeyAnnouncement::decode(&bytes).expect("decodes");
    assert_eq!(back, a);
    assert!(back.proof_is_valid());

    // The same proof for another node name does not verify.
    let mut renamed = bytes.clone();
    let pos = 2 + "node-".len();
    renamed[pos] = b'2';
    let renamed = VoteKeyAnnouncement::decode(&renamed).expect("still well formed");
    assert_eq!(renamed.node_id(), "node-2");
    assert!(!renamed.proof_is_valid());

    // Another key with node-1's proof does not verify either.
    let mut swapped = bytes.clone();
    let key_at = 2 + "node-1".len();
    swapped[key_at..key_at + 32].copy_from_slice(&pub_key(2));
    assert!(!VoteKeyAnnouncement::decode(&swapped)
        .expect("well formed")
        .proof_is_valid());

    // A vote signature is not a key proof (domain separation both ways).
    let v = vote(1, VoteDecision::Approve);
    let mut forged = bytes[..key_at + 32].to_vec();
    forged.extend_from_slice(v.signature());
    assert!(!VoteKeyAnnouncement::decode(&forged)
        .expect("well formed")
        .proof_is_valid());

    assert!(VoteKeyAnnouncement::new("Node 1", &key(1)).is_err());
    assert!(VoteKeyAnnouncement::decode(&bytes[..bytes.len() - 1]).is_err());
}

#[test]
fn the_key_book_pins_on_first_sight_and_never_replaces_a_pin() {
    let mut b = VoteKeyBook::new();
    assert!(b.is_empty());
    assert_eq!(b.observe("node-1", pub_key(1)), PinOutcome::NewlyPinned);
    assert_eq!(b.observe("node-1", pub_key(1)), PinOutcome::AlreadyPinned);
    assert_eq!(
        b.observe("node-1", pub_key(2)),
        PinOutcome::Changed { pinned: pub_key(1) }
    );
    assert_eq!(b.get("node-1"), Some(&pub_key(1)));
    assert_eq!(b.len(), 1);
    assert_eq!(b.forget("node-1"), Some(pub_key(1)));
    assert_eq!(b.observe("node-1", pub_key(2)), PinOutcome::NewlyPinned);

    let loaded = VoteKeyBook::from_pinned([
        ("node-1".to_owned(), pub_key(1)),
        ("node-1".to_owned(), pub_key(2)),
    ]);
    assert_eq!(loaded.get("node-1"), Some(&pub_key(1)));
}

#[test]
fn fingerprints_are_stable_short_and_differ_between_keys() {
    let f = vote_key_fingerprint(&pub_key(1));
    assert!(f.starts_with("SHA256:"), "{f}");
    assert_eq!(f.len(), "SHA256:".len() + 32 + 7);
    assert_eq!(f, vote_key_fingerprint(&pub_key(1)));
    assert_ne!(f, vote_key_fingerprint(&pub_key(2)));
}

// --- received votes -----------------------------------------------------------

#[test]
fn a_valid_vote_from_its_authenticated_sender_passes_the_checks() {
    check_vote(
        &vote(1, VoteDecision::Approve),
        "node-1",
        &subject(),
        &book(&[1, 2]),
    )
    .expect("valid");
}

#[test]
fn a_vote_naming_another_voter_than_the_sender_is_refused() {
    let err = check_vote(
        &vote(1, VoteDecision::Approve),
        "node-2",
        &subject(),
        &book(&[1, 2]),
    )
    .expect_err("relayed vote");
    assert!(matches!(err, VoteReject::SenderMismatch { .. }), "{err}");
    assert_eq!(err.violation_code(), Some(VIOLATION_SENDER_MISMATCH));
}

#[test]
fn a_vote_with_a_bad_signature_is_refused_and_attributed() {
    // node-1's vote signed with node-2's key.
    let forged = SignedVote::sign(body("node-1", VoteDecision::Approve), &key(2)).expect("valid");
    let err = check_vote(&forged, "node-1", &subject(), &book(&[1, 2])).expect_err("forged");
    assert!(
        matches!(&err, VoteReject::BadSignature { voter } if voter == "node-1"),
        "{err}"
    );
    assert_eq!(err.violation_code(), Some(VIOLATION_BAD_SIGNATURE));
}

#[test]
fn a_vote_from_a_node_without_a_pinned_key_is_refused_without_blame() {
    let err = check_vote(
        &vote(3, VoteDecision::Approve),
        "node-3",
        &subject(),
        &book(&[1, 2]),
    )
    .expect_err("unknown");
    assert!(matches!(err, VoteReject::UnknownVoter { .. }), "{err}");
    assert_eq!(err.violation_code(), None);
}

#[test]
fn a_vote_for_other_sighashes_txid_round_or_policy_is_refused() {
    let muts: Vec<Mutation> = vec![
        (
            "transaction_id",
            Box::new(|b| b.transaction_id = Uuid::from_bytes([1; 16])),
        ),
        ("round_no", Box::new(|b| b.round_no = 2)),
        (
            "txid",
            Box::new(|b| b.txid = Txid::from_byte_array([2; 32])),
        ),
        ("sighashes", Box::new(|b| b.sighashes[1] = [0x33; 32])),
        (
            "sighashes",
            Box::new(|b| {
                b.sighashes.pop();
            }),
        ),
        ("sighashes", Box::new(|b| b.sighashes.reverse())),
        ("policy_hash", Box::new(|b| b.policy_hash = [0xcd; 32])),
    ];
    for (field, m) in muts {
        let mut b = body("node-1", VoteDecision::Approve);
        m(&mut b);
        let v = SignedVote::sign(b, &key(1)).expect("valid");
        let err = check_vote(&v, "node-1", &subject(), &book(&[1])).expect_err(field);
        assert!(
            matches!(&err, VoteReject::WrongSubject { field: f, .. } if *f == field),
            "{field}: {err}"
        );
        assert_eq!(err.violation_code(), Some(VIOLATION_SUBJECT_MISMATCH));
    }
}

#[test]
fn a_redelivered_vote_is_a_duplicate_and_a_different_one_is_a_conflict() {
    let first = vote(1, VoteDecision::Approve);
    let again = SignedVote::decode(&first.encode()).expect("decodes");
    assert_eq!(compare_redelivery(&first, &again), Redelivery::Duplicate);
    let other = vote(1, VoteDecision::Reject);
    assert_eq!(compare_redelivery(&first, &other), Redelivery::Conflict);
    let mut later = body("node-1", VoteDecision::Approve);
    later.deadline_unix += 1;
    let later = SignedVote::sign(later, &key(1)).expect("valid");
    assert_eq!(compare_redelivery(&first, &later), Redelivery::Conflict);
}

// --- tally --------------------------------------------------------------------

#[test]
fn a_round_is_approved_at_quorum_rejected_when_quorum_is_impossible_else_open() {
    use VoteDecision::{Approve as A, Reject as R};
    let votes = |ds: &[VoteDecision]| -> Vec<SignedVote> {
        ds.iter()
            .enumerate()
            .map(|(i, d)| vote(i as u8 + 1, *d))
            .collect()
    };
    // 3 of 5.
    assert_eq!(evaluate_round(3, 5, &votes(&[])), Ok(RoundOutcome::Open));
    assert_eq!(
        evaluate_round(3, 5, &votes(&[A, A])),
        Ok(RoundOutcome::Open)
    );
    assert_eq!(
        evaluate_round(3, 5, &votes(&[A, A, A])),
        Ok(RoundOutcome::Approved)
    );
    assert_eq!(
        evaluate_round(3, 5, &votes(&[R, A, R, A, A])),
        Ok(RoundOutcome::Approved)
    );
    assert_eq!(
        evaluate_round(3, 5, &votes(&[R, R])),
        Ok(RoundOutcome::Open)
    );
    assert_eq!(
        evaluate_round(3, 5, &votes(&[R, R, R])),
        Ok(RoundOutcome::Rejected)
    );
    assert_eq!(
        evaluate_round(3, 5, &votes(&[A, R, R, R])),
        Ok(RoundOutcome::Rejected)
    );
    // n of n: one rejection settles it.
    assert_eq!(
        evaluate_round(3, 3, &votes(&[R])),
        Ok(RoundOutcome::Rejected)
    );
    assert_eq!(
        evaluate_round(1, 1, &votes(&[A])),
        Ok(RoundOutcome::Approved)
    );
    // Bad thresholds.
    assert_eq!(
        evaluate_round(0, 5, &votes(&[A])),
        Err(TallyError::BadThreshold {
            required: 0,
            total: 5
        })
    );
    assert!(evaluate_round(6, 5, &votes(&[])).is_err());
}

#[test]
fn a_voter_counts_once_in_a_tally() {
    let v = vote(1, VoteDecision::Approve);
    let again = vote(1, VoteDecision::Reject);
    let t = Tally::count([&v, &v, &again].map(|v| (v.voter(), v.body().decision)));
    assert_eq!(
        t,
        Tally {
            approvals: 1,
            rejections: 0
        }
    );
    assert_eq!(evaluate_round(2, 3, [&v, &v, &v]), Ok(RoundOutcome::Open));
}

// --- quorum certificate -------------------------------------------------------

#[test]
fn a_quorum_certificate_needs_required_distinct_valid_approvals() {
    let votes = vec![
        vote(3, VoteDecision::Approve),
        vote(1, VoteDecision::Approve),
        vote(2, VoteDecision::Reject),
        vote(4, VoteDecision::Approve),
    ];
    let keys = book(&[1, 2, 3, 4]);
    let qc = QuorumCertificate::verify(&votes, &keys, 3, &subject()).expect("3 approvals");
    assert_eq!(qc.approvers(), ["node-1", "node-3", "node-4"]);
    assert_eq!(qc.approvals().len(), 3);
    assert_eq!(qc.txid(), subject().txid);
    assert_eq!(qc.sighashes(), subject().sighashes.as_slice());
    assert_eq!(qc.policy_hash(), subject().policy_hash);
    assert_eq!(qc.transaction_id(), TX);
    assert_eq!(qc.not_after_unix(), 1_700_000_600);

    assert_eq!(
        QuorumCertificate::verify(&votes, &keys, 4, &subject()),
        Err(QcError::TooFewApprovals {
            approvals: 3,
            required: 4
        })
    );
    assert_eq!(
        QuorumCertificate::verify(&votes, &keys, 0, &subject()),
        Err(QcError::ZeroRequired)
    );
}

#[test]
fn a_quorum_certificate_refuses_a_voter_counted_twice() {
    let v1 = vote(1, VoteDecision::Approve);
    let votes = vec![v1.clone(), v1, vote(2, VoteDecision::Approve)];
    assert_eq!(
        QuorumCertificate::verify(&votes, &book(&[1, 2]), 2, &subject()),
        Err(QcError::DuplicateVoter {
            voter: "node-1".into()
        })
    );
}

#[test]
fn a_quorum_certificate_refuses_unknown_voters_and_bad_signatures() {
    let votes = vec![
        vote(1, VoteDecision::Approve),
        vote(9, VoteDecision::Approve),
    ];
    assert_eq!(
        QuorumCertificate::verify(&votes, &book(&[1, 2]), 2, &subject()),
        Err(QcError::UnknownVoter {
            voter: "node-9".into()
        })
    );
    let forged = SignedVote::sign(body("node-2", VoteDecision::Approve), &key(1)).expect("valid");
    let votes = vec![vote(1, VoteDecision::Approve), forged];
    assert_eq!(
        QuorumCertificate::verify(&votes, &book(&[1, 2]), 2, &subject()),
        Err(QcError::BadSignature {
            voter: "node-2".into()
        })
    );
}

#[test]
fn a_quorum_certificate_refuses_approvals_of_other_sighashes() {
    let mut other = body("node-2", VoteDecision::Approve);
    other.sighashes = vec![[0x11; 32]];
    let other = SignedVote::sign(other, &key(2)).expect("valid");
    let votes = vec![vote(1, VoteDecision::Approve), other];
    assert_eq!(
        QuorumCertificate::verify(&votes, &book(&[1, 2]), 2, &subject()),
        Err(QcError::WrongSubject {
            voter: "node-2".into(),
            field: "sighashes"
        })
    );
    // And a quorum for one sighash list is not one for another.
    let votes = vec![
        vote(1, VoteDecision::Approve),
        vote(2, VoteDecision::Approve),
    ];
    let mut expected = subject();
    expected.sighashes.push([0x44; 32]);
    assert!(matches!(
        QuorumCertificate::verify(&votes, &book(&[1, 2]), 2, &expected),
        Err(QcError::WrongSubject {
            field: "sighashes",
            ..
        })
    ));
}

// --- signing permit -----------------------------------------------------------

const POLICY: &str = r#"
version = 1
[[scope]]
key_id = "hot"
network = "regtest"
[scope.limits]
max_per_tx_sats = 1_000_000
"#;

/// A real approval from the policy engine for the sample view (txid [1; 32]).
fn approval() -> (policy::Approval, [u8; 32]) {
    let p = policy::Policy::from_toml_str(POLICY, "test.toml").expect("valid policy");
    let view = policy::fuzzing::sample_view("hot", policy::Network::Regtest);
    assert_eq!(view.txid, subject().txid);
    let ctx = policy::Context {
        now_unix: 1_700_000_000,
        window_spent: Vec::new(),
        approvals: Vec::new(),
        initiator: "alice".into(),
    };
    let a = p
        .evaluate(&view, &ctx)
        .into_approval()
        .expect("the sample view is within the limits");
    (a, *p.hash().as_bytes())
}

fn qc_for(policy_hash: [u8; 32], txid: Txid) -> QuorumCertificate {
    let mut expected = subject();
    expected.policy_hash = policy_hash;
    expected.txid = txid;
    let votes: Vec<SignedVote> = (1..=3)
        .map(|i| {
            let mut b = body(&format!("node-{i}"), VoteDecision::Approve);
            b.policy_hash = policy_hash;
            b.txid = txid;
            SignedVote::sign(b, &key(i)).expect("valid")
        })
        .collect();
    QuorumCertificate::verify(&votes, &book(&[1, 2, 3]), 3, &expected).expect("quorum")
}

#[test]
fn a_signing_permit_needs_an_agreeing_approval_and_quorum() {
    let (a, ph) = approval();
    let qc = qc_for(ph, subject().txid);
    let permit =
        SigningPermit::new(a, qc, &subject().sighashes, 1_700_000_100).expect("they agree");
    assert_eq!(permit.txid(), subject().txid);
    assert_eq!(permit.transaction_id(), TX);
    assert_eq!(permit.sighashes(), subject().sighashes.as_slice());
    assert!(permit.allows(0, &[0x11; 32]));
    assert!(permit.allows(1, &[0x22; 32]));
    assert!(!permit.allows(0, &[0x22; 32]));
    assert!(!permit.allows(2, &[0x11; 32]));
    assert_eq!(permit.quorum().approvers().len(), 3);
    assert_eq!(*permit.approval().policy_hash().as_bytes(), ph);
}

#[test]
fn a_permit_gives_leave_for_exactly_one_covered_input_and_sighash() {
    let (a, ph) = approval();
    let qc = qc_for(ph, subject().txid);
    let permit =
        SigningPermit::new(a, qc, &subject().sighashes, 1_700_000_100).expect("they agree");
    let ok = permit.authorize(1, &[0x22; 32]).expect("covered");
    assert_eq!((ok.index(), *ok.sighash()), (1, [0x22; 32]));
    assert!(ok.permits(&[0x22; 32]) && !ok.permits(&[0x11; 32]));
    for (index, sighash) in [(0, [0x22; 32]), (2, [0x11; 32])] {
        assert_eq!(
            permit.authorize(index, &sighash).map(|_| ()),
            Err(PermitError::InputNotPermitted { index })
        );
    }
}

#[test]
fn a_signing_permit_refuses_an_approval_of_another_txid() {
    let (a, ph) = approval();
    let qc = qc_for(ph, Txid::from_byte_array([5; 32]));
    assert!(matches!(
        SigningPermit::new(a, qc, &subject().sighashes, 1_700_000_100),
        Err(PermitError::TxidMismatch { .. })
    ));
}

#[test]
fn a_signing_permit_refuses_an_approval_under_another_policy() {
    let (a, _) = approval();
    let qc = qc_for([0xee; 32], subject().txid);
    assert!(matches!(
        SigningPermit::new(a, qc, &subject().sighashes, 1_700_000_100),
        Err(PermitError::PolicyMismatch { .. })
    ));
}

#[test]
fn a_signing_permit_refuses_other_sighashes_and_expired_quorums() {
    let (a, ph) = approval();
    let qc = qc_for(ph, subject().txid);
    assert_eq!(
        SigningPermit::new(a, qc, &[[0x11; 32]], 1_700_000_100).map(|_| ()),
        Err(PermitError::SighashMismatch)
    );
    let (a, ph) = approval();
    let qc = qc_for(ph, subject().txid);
    assert_eq!(
        SigningPermit::new(a, qc, &subject().sighashes, 1_700_000_601).map(|_| ()),
        Err(PermitError::Expired {
            not_after_unix: 1_700_000_600,
            now_unix: 1_700_000_601
        })
    );
}
