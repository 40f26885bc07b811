//! Receiving votes and vote-key announcements: the pure checks of the [`vote`] crate
//! ([`check_vote`]), then the node's database (one vote per node and round,
//! violations, pins).

use uuid::Uuid;

use crate::store::votes::{NewSignedVote, VoteSlot};
use crate::store::{Store, StoreError};
use vote::{
    check_vote, compare_redelivery, vote_key_fingerprint, KeyAnnounceError, PinOutcome, Redelivery,
    SignedVote, VoteKeyAnnouncement, VoteKeyBook, VoteReject, VoteSubject,
    VIOLATION_BAD_KEY_ANNOUNCEMENT,
};

/// Storage failures inside the vote crate's errors.
impl From<StoreError> for VoteReject {
    fn from(e: StoreError) -> Self {
        VoteReject::Store(Box::new(e))
    }
}

impl From<StoreError> for KeyAnnounceError {
    fn from(e: StoreError) -> Self {
        KeyAnnounceError::Store(Box::new(e))
    }
}

/// A vote that passed every check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// Stored now.
    New,
    /// The same vote was already stored (a harmless re-delivery).
    Duplicate,
}

/// What [`VoteIntake::precheck`] found out about a genuine vote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prechecked {
    /// No vote of the voter is stored for that round (yet): keep it for the
    /// round.
    Unseen,
    /// The voter's vote in that round is already stored and this is the same one.
    AlreadyStored,
}

/// Accepts votes and key announcements into this node's database.
#[derive(Debug, Clone)]
pub struct VoteIntake {
    store: Store,
    local_node: String,
}

impl VoteIntake {
    /// An intake writing to `store` on behalf of `local_node` (this node's id, the
    /// `detected_by` of violations).
    pub fn new(store: Store, local_node: impl Into<String>) -> Self {
        VoteIntake {
            store,
            local_node: local_node.into(),
        }
    }

    /// Accepts `signed`, received over the connection authenticated as `sender`
    /// (this node's own id for its own vote), into round `round_id` whose subject
    /// is `expected`.
    ///
    /// Refusals that are a peer's fault are recorded in `byzantine_violations`
    /// (see [`VoteReject::violation_code`]); a second, different vote of the same
    /// node in the round is refused and the first one stays.
    pub async fn accept(
        &self,
        keys: &VoteKeyBook,
        round_id: Uuid,
        signed: &SignedVote,
        sender: &str,
        expected: &VoteSubject,
    ) -> Result<Accepted, VoteReject> {
        self.store_checked(
            check_vote(signed, sender, expected, keys),
            round_id,
            signed,
            sender,
            expected,
        )
        .await
    }

    /// Accepts `signed`, relayed by `relayer` (the signing leader forwards the
    /// quorum's votes with its sign request and result). The vote's own signature
    /// under its voter's pinned key is what counts: the relayer cannot make one up.
    /// A relayed vote with a bad signature or for another subject is recorded
    /// against the relayer; a valid vote that conflicts with the voter's stored one
    /// is a double vote of the voter.
    pub async fn accept_relayed(
        &self,
        keys: &VoteKeyBook,
        round_id: Uuid,
        signed: &SignedVote,
        relayer: &str,
        expected: &VoteSubject,
    ) -> Result<Accepted, VoteReject> {
        self.store_checked(
            check_vote(signed, signed.voter(), expected, keys),
            round_id,
            signed,
            relayer,
            expected,
        )
        .await
    }

    /// The checks that need no live round, for a vote of a transaction this node
    /// does not track (yet, or any more): the voter is the authenticated sender,
    /// the signature verifies under the voter's pinned key and, when this node
    /// already stored a vote of the voter in that round (the round ended here
    /// before the vote arrived), it is the same vote. A forgery or a double vote is
    /// recorded whenever it arrives, even after the round ended here.
    pub async fn precheck(
        &self,
        keys: &VoteKeyBook,
        signed: &SignedVote,
        sender: &str,
    ) -> Result<Prechecked, VoteReject> {
        let body = signed.body();
        let voter = signed.voter();
        let rej = if voter != sender {
            VoteReject::SenderMismatch {
                sender: sender.to_owned(),
                voter: voter.to_owned(),
            }
        } else {
            let key = keys.get(voter).ok_or_else(|| VoteReject::UnknownVoter {
                voter: voter.to_owned(),
            })?;
            if signed.verify(key).is_ok() {
                let stored = self
                    .store
                    .stored_vote_of(body.transaction_id, body.round_no, voter)
                    .await?;
                return match stored {
                    None => Ok(Prechecked::Unseen),
                    Some(None) => Ok(Prechecked::AlreadyStored),
                    Some(Some(existing)) => {
                        self.compare_with_stored(
                            &existing,
                            signed,
                            body.transaction_id,
                            body.round_no,
                        )
                        .await?;
                        Ok(Prechecked::AlreadyStored)
                    }
                };
            }
            VoteReject::BadSignature {
                voter: voter.to_owned(),
            }
        };
        self.record_refusal(sender, &rej, body.transaction_id, body.round_no, signed)
            .await;
        Err(rej)
    }

    async fn store_checked(
        &self,
        checked: Result<(), VoteReject>,
        round_id: Uuid,
        signed: &SignedVote,
        sender: &str,
        expected: &VoteSubject,
    ) -> Result<Accepted, VoteReject> {
        let session = round_session(expected.transaction_id, expected.round_no);
        if let Err(rej) = checked {
            let recorded = self
                .record_refusal(
                    sender,
                    &rej,
                    expected.transaction_id,
                    expected.round_no,
                    signed,
                )
                .await;
            if !recorded {
                tracing::info!(%sender, round = %session, error = %rej, "vote not accepted");
            }
            return Err(rej);
        }
        let body = signed.body();
        let row = vote_row(round_id, signed);
        let existing = match self.store.insert_signed_vote(&row).await? {
            VoteSlot::Inserted => {
                tracing::info!(voter = %body.voter, round = %session, decision = %body.decision, "vote accepted");
                return Ok(Accepted::New);
            }
            VoteSlot::Taken { existing } => existing.ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "stored vote of {} in round {session} has no signed form",
                    body.voter
                ))
            })?,
        };
        self.compare_with_stored(
            &existing,
            signed,
            expected.transaction_id,
            expected.round_no,
        )
        .await?;
        Ok(Accepted::Duplicate)
    }

    /// Records refusal `rej` of `signed` (round `round_no` of `transaction_id`) as a
    /// violation of `culprit`, with the vote as evidence, when it is a peer's fault;
    /// returns whether it was.
    async fn record_refusal(
        &self,
        culprit: &str,
        rej: &VoteReject,
        transaction_id: Uuid,
        round_no: u32,
        signed: &SignedVote,
    ) -> bool {
        let Some(code) = rej.violation_code() else {
            return false;
        };
        let evidence = serde_json::json!({
            "transaction_id": transaction_id.to_string(),
            "round_no": round_no,
            "error": rej.to_string(),
            "vote": hex::encode(signed.encode()),
        });
        let session = round_session(transaction_id, round_no);
        self.violation(culprit, code, &session, &evidence, &rej.to_string())
            .await;
        true
    }

    /// Compares `signed` with the voter's stored vote (wire form `existing`) of the
    /// same round: the same vote again is fine; a different one is refused and
    /// recorded as the voter's double vote.
    async fn compare_with_stored(
        &self,
        existing: &[u8],
        signed: &SignedVote,
        transaction_id: Uuid,
        round_no: u32,
    ) -> Result<(), VoteReject> {
        let voter = signed.voter();
        let session = round_session(transaction_id, round_no);
        let stored = SignedVote::decode(existing).map_err(|e| {
            StoreError::Corrupt(format!("stored vote of {voter} in round {session}: {e}"))
        })?;
        match compare_redelivery(&stored, signed) {
            Redelivery::Duplicate => Ok(()),
            Redelivery::Conflict => {
                let rej = VoteReject::DoubleVote {
                    voter: voter.to_owned(),
                    round_no,
                };
                let evidence = serde_json::json!({
                    "transaction_id": transaction_id.to_string(),
                    "round_no": round_no,
                    "first": hex::encode(existing),
                    "second": hex::encode(signed.encode()),
                });
                self.violation(
                    voter,
                    vote::VIOLATION_DOUBLE_VOTE,
                    &session,
                    &evidence,
                    &rej.to_string(),
                )
                .await;
                Err(rej)
            }
        }
    }

    /// The stored signed votes of a round (rows without a signed form are
    /// skipped with a warning).
    pub async fn round_votes(&self, round_id: Uuid) -> Result<Vec<SignedVote>, StoreError> {
        let mut out = Vec::new();
        for row in self.store.round_votes(round_id).await? {
            let Some(bytes) = row.signed_vote else {
                tracing::warn!(voter = %row.node_id, %round_id, "stored vote has no signed form; not counted");
                continue;
            };
            let v = SignedVote::decode(&bytes).map_err(|e| {
                StoreError::Corrupt(format!(
                    "stored vote of {} in round {round_id}: {e}",
                    row.node_id
                ))
            })?;
            out.push(v);
        }
        Ok(out)
    }

    /// Handles a vote-key announcement received over the connection authenticated
    /// as `sender`: it must name `sender` and carry a valid proof of possession;
    /// then the key is pinned on first sight (persistently, then in `keys`). A key
    /// different from the pinned one is refused and recorded as `vote_key_changed`.
    pub async fn accept_key_announcement(
        &self,
        keys: &mut VoteKeyBook,
        announcement: &VoteKeyAnnouncement,
        sender: &str,
    ) -> Result<PinOutcome, KeyAnnounceError> {
        let claimed = announcement.node_id();
        let refusal = if claimed != sender {
            Some(KeyAnnounceError::SenderMismatch {
                sender: sender.to_owned(),
                claimed: claimed.to_owned(),
            })
        } else if !announcement.proof_is_valid() {
            Some(KeyAnnounceError::BadProof {
                node: sender.to_owned(),
            })
        } else {
            None
        };
        if let Some(err) = refusal {
            let evidence = serde_json::json!({
                "error": err.to_string(),
                "announcement": hex::encode(announcement.encode()),
            });
            self.violation(
                sender,
                VIOLATION_BAD_KEY_ANNOUNCEMENT,
                "vote-keys",
                &evidence,
                &err.to_string(),
            )
            .await;
            return Err(err);
        }
        let key = *announcement.public_key();
        let outcome = self
            .store
            .pin_vote_key(&self.local_node, sender, &key)
            .await?;
        match outcome {
            PinOutcome::NewlyPinned | PinOutcome::AlreadyPinned => {
                if let PinOutcome::Changed { pinned } = keys.observe(sender, key) {
                    // The database is the authority: it just accepted this key, so
                    // the in-memory copy was stale (e.g. an operator unpinned).
                    tracing::warn!(node = %sender, stale = %vote_key_fingerprint(&pinned), "replacing a stale in-memory vote key pin");
                    keys.forget(sender);
                    keys.observe(sender, key);
                }
                if outcome == PinOutcome::NewlyPinned {
                    tracing::info!(node = %sender, fingerprint = %vote_key_fingerprint(&key), "vote key pinned");
                }
                Ok(outcome)
            }
            PinOutcome::Changed { pinned } => {
                let err = KeyAnnounceError::KeyChanged {
                    node: sender.to_owned(),
                    pinned: vote_key_fingerprint(&pinned),
                    offered: vote_key_fingerprint(&key),
                };
                tracing::warn!(node = %sender, error = %err, "vote key change refused");
                Err(err)
            }
        }
    }

    async fn violation(
        &self,
        culprit: &str,
        code: &str,
        session: &str,
        evidence: &serde_json::Value,
        summary: &str,
    ) {
        tracing::warn!(%culprit, violation = code, %session, %summary, "voting violation");
        if let Err(e) = self
            .store
            .record_vote_violation(&self.local_node, culprit, code, session, evidence, summary)
            .await
        {
            tracing::error!(%culprit, violation = code, error = %e, "cannot record the violation");
        }
    }
}

/// The row that stores `signed` in round `round_id`.
pub fn vote_row(round_id: Uuid, signed: &SignedVote) -> NewSignedVote {
    let body = signed.body();
    NewSignedVote {
        round_id,
        node_id: body.voter.clone(),
        decision: body.decision.as_str().to_owned(),
        reasons: serde_json::json!(body.reasons),
        policy_hash: hex::encode(body.policy_hash),
        signature: signed.signature().to_vec(),
        signed_vote: signed.encode(),
    }
}

/// `byzantine_violations.session_id` of a round: `<transaction id>/<round>`.
fn round_session(transaction_id: Uuid, round_no: u32) -> String {
    format!("{transaction_id}/{round_no}")
}
