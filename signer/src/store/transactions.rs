//! The `transactions` table and its state machine (enforced by the database).

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::audit::AuditOf;
use super::groups::{all_written, write_together_or_alone, Groups, Waiting};
use super::{Store, StoreError};

/// Transaction states; the database enforces the allowed transitions.
pub const STATES: &[&str] = &[
    "pending",
    "voting",
    "approved",
    "signing",
    "signed",
    "broadcast",
    "confirmed",
    "rejected",
    "failed",
    "expired",
    "aborted_byzantine",
];

/// A stored transaction.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct TransactionRow {
    /// Id.
    pub id: Uuid,
    /// Key that spends.
    pub key_id: Option<String>,
    /// State.
    pub state: String,
    /// Recipient address.
    pub recipient: Option<String>,
    /// Amount in satoshis.
    pub amount_sats: Option<i64>,
    /// Fee in satoshis.
    pub fee_sats: Option<i64>,
    /// Final transaction id once signed.
    pub txid: Option<String>,
    /// Who submitted it (token id).
    pub initiator: String,
    /// Node that coordinates its signing.
    pub leader: Option<String>,
    /// Why it failed, when it did.
    pub failure_reason: Option<String>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// A new transaction.
#[derive(Debug, Clone)]
pub struct NewTransaction {
    /// Id (chosen by the caller so all nodes agree on it).
    pub id: Uuid,
    /// Key that spends.
    pub key_id: Option<String>,
    /// Recipient address.
    pub recipient: Option<String>,
    /// Amount in satoshis.
    pub amount_sats: Option<i64>,
    /// Fee in satoshis.
    pub fee_sats: Option<i64>,
    /// PSBT bytes.
    pub psbt: Option<Vec<u8>>,
    /// Who submitted it.
    pub initiator: String,
}

macro_rules! columns {
    () => {
        "id, key_id, state, recipient, amount_sats, fee_sats, txid, initiator, leader, \
         failure_reason, created_at, updated_at"
    };
}

impl Store {
    /// Inserts a transaction in state `pending`.
    pub async fn insert_transaction(&self, tx: &NewTransaction) -> Result<(), StoreError> {
        let mut conn = self.pool().acquire().await?;
        insert_row(&mut conn, tx).await
    }

    /// A leader's new transaction, in one database transaction: the row (state
    /// `pending`), the reservation of `reserve` (the UTXOs its coin selection chose;
    /// a `Duplicate` error when one is no longer available) and its audit row.
    /// Nothing is written unless all three are.
    ///
    /// Grouped with the submissions other requests are storing (see
    /// [`super::groups`]; issue 21): one statement for the rows, one for the
    /// reservations, one append of the audit records and one commit for the group.
    /// A group that cannot be written whole (an output no longer available) is
    /// written again one submission at a time, so that one fails alone.
    pub async fn insert_submitted_transaction(
        &self,
        new: &NewTransaction,
        reserve: &[bitcoin::OutPoint],
        audit: AuditOf,
    ) -> Result<(), StoreError> {
        let item = Submitted {
            new: new.clone(),
            reserve: reserve.to_vec(),
            audit,
        };
        let store = self.clone();
        Groups::submit_or_alone(
            &self.submissions,
            item,
            |s: &Submitted| s.new.id,
            move |group| {
                let store = store.clone();
                async move { store.write_submitted_group(group).await }
            },
            |item| self.submitted_alone(item),
        )
        .await
    }

    /// One group of submissions (see [`Store::insert_submitted_transaction`]).
    async fn write_submitted_group(&self, group: Vec<Waiting<Submitted, Result<(), StoreError>>>) {
        write_together_or_alone(
            group,
            |items| async move {
                let n = items.len();
                let all = self.submitted_together(items).await?;
                Ok(all_written(all, n, || Ok(())))
            },
            |s| async move { self.submitted_alone(s).await },
        )
        .await;
    }

    /// One submission in its own database transaction.
    async fn submitted_alone(&self, s: Submitted) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        insert_row(&mut tx, &s.new).await?;
        super::utxos::reserve_available(&mut tx, s.new.id, &s.reserve).await?;
        s.audit.append(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Several submissions in one database transaction: the rows in one
    /// statement, the reservations in one, the audit records in one append.
    /// `false`, with nothing written, when a reservation finds its output no
    /// longer available or a row is refused.
    async fn submitted_together(&self, items: Vec<Submitted>) -> Result<bool, StoreError> {
        let ids: Vec<Uuid> = items.iter().map(|s| s.new.id).collect();
        let (mut r_txids, mut r_vouts, mut r_ids) = (Vec::new(), Vec::new(), Vec::new());
        for s in &items {
            for o in &s.reserve {
                r_txids.push(o.txid.to_string());
                r_vouts.push(i64::from(o.vout));
                r_ids.push(s.new.id);
            }
        }
        let mut tx = self.pool().begin().await?;
        let rows: Vec<&NewTransaction> = items.iter().map(|s| &s.new).collect();
        match insert_rows(&mut tx, &rows).await {
            Ok(n) if usize::try_from(n).ok() == Some(items.len()) => {}
            Ok(_) | Err(_) => return Ok(false),
        }
        if !r_ids.is_empty() {
            let reserved = sqlx::query(
                "UPDATE utxos u SET state = 'reserved', reserved_by = r.id \
                 FROM unnest($1::text[], $2::bigint[], $3::uuid[]) AS r(txid, vout, id) \
                 WHERE u.txid = r.txid AND u.vout = r.vout AND u.state = 'available'",
            )
            .bind(&r_txids)
            .bind(&r_vouts)
            .bind(&r_ids)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if usize::try_from(reserved).ok() != Some(r_ids.len()) {
                return Ok(false);
            }
        }
        let audits = items.into_iter().map(|s| s.audit).collect();
        AuditOf::append_many(audits, &mut tx).await?;
        crate::crash::before_commit(crate::crash::INTAKE_GROUP, || ids.clone());
        tx.commit().await?;
        Ok(true)
    }

    /// Opens the voting round of a proposal in one database transaction: the row of
    /// a peer's proposal (`new`; the leader's own row exists since intake), its
    /// leader and vote deadline, state `voting`, and the round. Nothing is written
    /// unless all of it is (a `Duplicate` error when the proposal is known already);
    /// one commit instead of four (issue 21).
    ///
    /// `reserve` (the proposal's proven inputs, empty when the caller does not
    /// reserve them) are reserved for `id` in the same commit (issue 21: it was a
    /// database transaction of its own). When one of them is spent or reserved by
    /// another transaction, the proposal is recorded without reserving anything and
    /// that input is returned: this node votes reject.
    pub async fn open_voting(
        &self,
        new: Option<&NewTransaction>,
        id: Uuid,
        leader: &str,
        round: &super::votes::NewRound,
        reserve: &[wallet::OwnedUtxo],
    ) -> Result<Option<bitcoin::OutPoint>, StoreError> {
        // Rolled back whole on an unavailable input, then recorded again without
        // the reservation (rare); the second pass reserves nothing, so it commits.
        let mut unavailable = None;
        for reserve in [reserve, &[]] {
            let mut tx = self.pool().begin().await?;
            match open_in(&mut tx, new, id, leader, round, reserve).await? {
                Opened::Yes => {
                    tx.commit().await?;
                    break;
                }
                Opened::NotFound => {
                    return Err(StoreError::NotFound {
                        what: "transaction",
                        id: id.to_string(),
                    })
                }
                Opened::Unavailable(o) => {
                    tx.rollback().await?;
                    unavailable = Some(o);
                }
            }
        }
        Ok(unavailable)
    }

    /// One transaction.
    pub async fn get_transaction(&self, id: Uuid) -> Result<TransactionRow, StoreError> {
        sqlx::query_as::<_, TransactionRow>(concat!(
            "SELECT ",
            columns!(),
            " FROM transactions WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(self.pool())
        .await?
        .ok_or(StoreError::NotFound {
            what: "transaction",
            id: id.to_string(),
        })
    }

    /// Newest first, optionally filtered by state; `before` is a cursor
    /// `(created_at, id)` of the last row of the previous page.
    pub async fn list_transactions(
        &self,
        state: Option<&str>,
        before: Option<(DateTime<Utc>, Uuid)>,
        limit: i64,
    ) -> Result<Vec<TransactionRow>, StoreError> {
        let (ts, id) = match before {
            Some((ts, id)) => (Some(ts), Some(id)),
            None => (None, None),
        };
        let rows = sqlx::query_as::<_, TransactionRow>(concat!(
            "SELECT ",
            columns!(),
            " FROM transactions \
             WHERE ($1::text IS NULL OR state = $1) \
               AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3)) \
             ORDER BY created_at DESC, id DESC LIMIT $4"
        ))
        .bind(state)
        .bind(ts)
        .bind(id)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        Ok(rows)
    }

    /// Moves a transaction to `to`; the database refuses transitions the state
    /// machine does not allow.
    pub async fn transition_transaction(
        &self,
        id: Uuid,
        to: &str,
        failure_reason: Option<&str>,
    ) -> Result<(), StoreError> {
        set_transaction_state(self.pool(), id, to, failure_reason).await
    }

    /// Count of transactions (all states).
    pub async fn count_transactions(&self) -> Result<i64, StoreError> {
        let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM transactions")
            .fetch_one(self.pool())
            .await?;
        Ok(n)
    }

    /// Records who leads a transaction and the end of its voting round.
    pub async fn set_transaction_leader(
        &self,
        id: Uuid,
        leader: &str,
        deadline: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE transactions SET leader = $2, vote_deadline = $3 WHERE id = $1")
            .bind(id)
            .bind(leader)
            .bind(deadline)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Satoshis counted against key `key_id` within the last `window_seconds`: the
    /// outflow of every transaction this node voted approve on or saw a quorum
    /// approve, unless it ended here before `approved` (see migration
    /// `0010_outflows.sql`), whatever the leader reported later. `except` (the
    /// transaction being evaluated) is left out.
    ///
    /// `before_own_count`: only what was counted before `except`'s own outflow
    /// (when it has one), i.e. the window its approval was checked against. A
    /// signer re-checks the policy this way: counts that came after its approval
    /// (other payments approved while this one waited to be signed, each checked
    /// against this one's count) do not make it refuse what it approved within
    /// the limit (the velocity test's "0 signed" under load: every approval
    /// counted before any signing, and every signer then refused).
    pub async fn spent_in_window(
        &self,
        key_id: &str,
        window_seconds: u64,
        except: Uuid,
        before_own_count: bool,
    ) -> Result<u64, StoreError> {
        let secs = i64::try_from(window_seconds).unwrap_or(i64::MAX);
        let (sum,): (Option<i64>,) = sqlx::query_as(
            "SELECT sum(o.outflow_sats)::bigint FROM outflows o \
             WHERE o.key_id = $1 AND o.released_at IS NULL AND o.transaction_id <> $3 \
             AND o.counted_at > now() - make_interval(secs => $2::double precision) \
             AND (NOT $4 OR o.counted_at < COALESCE( \
                 (SELECT c.counted_at FROM outflows c WHERE c.transaction_id = $3), 'infinity'))",
        )
        .bind(key_id)
        .bind(secs)
        .bind(except)
        .bind(before_own_count)
        .fetch_one(self.pool())
        .await?;
        Ok(u64::try_from(sum.unwrap_or(0)).unwrap_or(0))
    }

    /// Starts counting `outflow_sats` of transaction `id` against `key_id`
    /// (`counted_for`: `own_approve` or `quorum_approved`). A transaction is counted
    /// once: a second call changes nothing.
    pub async fn count_outflow(
        &self,
        id: Uuid,
        key_id: &str,
        outflow_sats: u64,
        counted_for: OutflowReason,
    ) -> Result<(), StoreError> {
        let mut conn = self.pool().acquire().await?;
        insert_outflow(&mut conn, id, key_id, outflow_sats, counted_for).await
    }

    /// Writes this node's vote on transaction `id` before it leaves, in one database
    /// transaction: for an approval (`approve`), the claim of its txid under its
    /// data (see [`Store::claim_txid_approval`]) and its outflow counted against the
    /// key's velocity windows; then the signed vote `own_vote` and its audit row.
    /// When the txid was approved here under other data, nothing is written and
    /// the first transaction is returned (the caller votes reject instead). Run
    /// again when PostgreSQL rolled it back for a deadlock (see
    /// [`super::retry_conflicts`]).
    pub async fn record_own_vote(
        &self,
        id: Uuid,
        approve: Option<ApprovalClaim<'_>>,
        own_vote: &super::votes::NewSignedVote,
        audit: AuditOf,
    ) -> Result<VoteRecord, StoreError> {
        super::retry_conflicts("own vote", || {
            self.record_own_vote_once(id, approve, own_vote, audit.clone())
        })
        .await
    }

    async fn record_own_vote_once(
        &self,
        id: Uuid,
        approve: Option<ApprovalClaim<'_>>,
        own_vote: &super::votes::NewSignedVote,
        audit: AuditOf,
    ) -> Result<VoteRecord, StoreError> {
        let mut tx = self.pool().begin().await?;
        let r = write_own_vote(&mut tx, id, approve, own_vote, audit).await?;
        if r == VoteRecord::Recorded {
            tx.commit().await?;
        }
        Ok(r)
    }
}

/// Claims `a.txid` for transaction `id` under its data (see
/// [`Store::record_own_vote`]): [`VoteRecord::Recorded`] when it is new here or
/// claimed under the same data; the first transaction when it was approved here
/// under other data.
async fn claim_txid(
    conn: &mut sqlx::PgConnection,
    id: Uuid,
    a: &ApprovalClaim<'_>,
) -> Result<VoteRecord, StoreError> {
    // A new txid is claimed in one statement; only a txid claimed before (rare: the
    // same unsigned transaction proposed again) is read back.
    let claimed: Option<(Uuid,)> = sqlx::query_as(
        "INSERT INTO approved_txids (txid, data_hash, transaction_id) VALUES ($1, $2, $3) \
         ON CONFLICT (txid) DO NOTHING RETURNING transaction_id",
    )
    .bind(a.txid)
    .bind(a.data_hash.as_slice())
    .bind(id)
    .fetch_optional(&mut *conn)
    .await
    .map_err(|e| StoreError::classify(e, "txid approval"))?;
    if claimed.is_none() {
        let (hash, first): (Vec<u8>, Uuid) =
            sqlx::query_as("SELECT data_hash, transaction_id FROM approved_txids WHERE txid = $1")
                .bind(a.txid)
                .fetch_one(&mut *conn)
                .await?;
        if hash.as_slice() != a.data_hash.as_slice() {
            return Ok(VoteRecord::TxidApprovedWithOtherData(first));
        }
    }
    Ok(VoteRecord::Recorded)
}

/// What [`open_in`] did.
enum Opened {
    /// Row (for a peer's proposal), state, round and reservation written.
    Yes,
    /// The transaction is not here (the leader's own row is missing).
    NotFound,
    /// This input is spent or reserved by another transaction: the caller rolls
    /// back.
    Unavailable(bitcoin::OutPoint),
}

/// The statements of [`Store::open_voting`], in the caller's database transaction.
async fn open_in(
    conn: &mut sqlx::PgConnection,
    new: Option<&NewTransaction>,
    id: Uuid,
    leader: &str,
    round: &super::votes::NewRound,
    reserve: &[wallet::OwnedUtxo],
) -> Result<Opened, StoreError> {
    if let Some(new) = new {
        insert_row(&mut *conn, new).await?;
    }
    // Leader, deadline, the move to `voting` (the state machine's trigger checks it
    // as any other) and the round: one statement (issue 21).
    let opened: Option<(Uuid,)> = sqlx::query_as(
        "WITH t AS (UPDATE transactions SET leader = $2, vote_deadline = $3, \
                           state = 'voting' WHERE id = $1 RETURNING id) \
         INSERT INTO voting_rounds \
             (id, transaction_id, round_no, required_approvals, total_nodes, deadline) \
         SELECT $4, t.id, $5, $6, $7, $3 FROM t RETURNING id",
    )
    .bind(id)
    .bind(leader)
    .bind(round.deadline)
    .bind(round.id)
    .bind(round.round_no)
    .bind(round.required_approvals)
    .bind(round.total_nodes)
    .fetch_optional(&mut *conn)
    .await
    .map_err(|e| StoreError::classify(e, "transaction"))?;
    if opened.is_none() {
        return Ok(Opened::NotFound);
    }
    // The transaction is live (it just moved to `voting` in this commit), so the
    // reservation needs no check of its state.
    Ok(
        match super::utxos::reserve_in(&mut *conn, id, reserve).await? {
            Some(o) => Opened::Unavailable(o),
            None => Opened::Yes,
        },
    )
}

/// The statements of [`Store::record_own_vote`], in the caller's database
/// transaction (committed by the caller when [`VoteRecord::Recorded`]).
async fn write_own_vote(
    conn: &mut sqlx::PgConnection,
    id: Uuid,
    approve: Option<ApprovalClaim<'_>>,
    own_vote: &super::votes::NewSignedVote,
    audit: AuditOf,
) -> Result<VoteRecord, StoreError> {
    if let Some(a) = approve {
        let r = claim_txid(&mut *conn, id, &a).await?;
        if r != VoteRecord::Recorded {
            return Ok(r);
        }
    }
    let (key_id, sats) = outflow_columns(id, approve.as_ref().map(|a| (a.key_id, a.outflow_sats)))?;
    // An approval's outflow count, the signed vote itself and the audit record:
    // one statement (issue 21). This node votes once per round: a stored vote
    // of its own fails the statement (no `ON CONFLICT`), and nothing of this
    // one is written.
    let v = own_vote;
    audit
        .append_with(
            conn,
            super::audit::audited_statement!(
                "o AS (INSERT INTO outflows (transaction_id, key_id, outflow_sats, counted_for) \
                       SELECT $11, $12, $13, $14 WHERE $12::text IS NOT NULL \
                       ON CONFLICT (transaction_id) DO NOTHING RETURNING 1), \
                 done AS (INSERT INTO votes (round_id, node_id, decision, reasons, policy_hash, \
                                             signature, signed_vote) \
                          SELECT $15, $16, $17, $18, $19, $20, $21 \
                          WHERE (SELECT count(*) FROM o) >= 0 RETURNING id)"
            ),
            |q| {
                q.bind(id)
                    .bind(key_id)
                    .bind(sats)
                    .bind(OutflowReason::OwnApprove.as_str())
                    .bind(v.round_id)
                    .bind(v.node_id.as_str())
                    .bind(v.decision.as_str())
                    .bind(&v.reasons)
                    .bind(v.policy_hash.as_str())
                    .bind(v.signature.as_slice())
                    .bind(v.signed_vote.as_slice())
            },
        )
        .await?;
    Ok(VoteRecord::Recorded)
}

impl super::Store {
    /// The one commit before this node's share of a signature for an input leaves
    /// (issue 21: it was three): claims signing session `claim.session` (bound to
    /// its transaction, input, signer set and leader), moves the transaction from
    /// `approved` to `signing` (or finds it there, for a later input) and appends
    /// `audit`, together or not at all. Nothing is written when the session id was
    /// used before (by anything) or when the transaction ended here first
    /// (expired, failed, ...): no partial may leave then. A run that PostgreSQL
    /// rolled back for a deadlock with a concurrent writer is run again (see
    /// [`super::retry_conflicts`]).
    ///
    /// Grouped with the entries other signing runs are writing (see
    /// [`super::groups`]; issue 21): the group's claims, one statement moving
    /// every transaction with its audit record, one commit. Each caller still gets
    /// its answer only once its entry is committed; a group that cannot be written
    /// whole (a session used before, a transaction that ended) is written again one
    /// entry at a time, so that one gets its own answer.
    pub async fn enter_signing_session(
        &self,
        claim: &SessionClaim<'_>,
        audit: AuditOf,
    ) -> Result<SigningEntry, StoreError> {
        let input = i32::try_from(claim.input).map_err(|_| StoreError::NotFound {
            what: "input",
            id: claim.input.to_string(),
        })?;
        let entry = SessionEntry {
            session: claim.session,
            tx: claim.tx,
            input,
            signers: claim.signers.to_vec(),
            leader: claim.leader.to_owned(),
            audit,
        };
        let store = self.clone();
        Groups::submit_or_alone(
            &self.session_entries,
            entry,
            |e: &SessionEntry| e.tx,
            move |group| {
                let store = store.clone();
                async move { store.write_session_group(group).await }
            },
            |entry| async move { self.session_entry_alone(&entry).await },
        )
        .await
    }

    /// One group of signing entries (see [`Store::enter_signing_session`]).
    async fn write_session_group(
        &self,
        group: Vec<Waiting<SessionEntry, Result<SigningEntry, StoreError>>>,
    ) {
        write_together_or_alone(
            group,
            |entries| async move {
                let n = entries.len();
                let all = self.sessions_entered_together(entries).await?;
                Ok(all_written(all, n, || Ok(SigningEntry::Entered)))
            },
            |e| async move { self.session_entry_alone(&e).await },
        )
        .await;
    }

    /// One entry in its own database transaction; a run that PostgreSQL rolled
    /// back for a deadlock with a concurrent writer is run again (see
    /// [`super::retry_conflicts`]).
    async fn session_entry_alone(&self, e: &SessionEntry) -> Result<SigningEntry, StoreError> {
        super::retry_conflicts("signing entry", || self.enter_signing_session_once(e)).await
    }

    async fn enter_signing_session_once(
        &self,
        e: &SessionEntry,
    ) -> Result<SigningEntry, StoreError> {
        let mut tx = self.pool().begin().await?;
        if !claim_session(&mut tx, e).await? {
            return Ok(SigningEntry::SessionUsed);
        }
        // The move to `signing` (only from a live approved state) and the audit
        // record in one statement; rolled back, with the claim, when the
        // transaction ended.
        let (entered, _) = e
            .audit
            .clone()
            .append_with(
                &mut tx,
                super::audit::audited_statement!(
                    "done AS (UPDATE transactions SET state = 'signing' \
                              WHERE id = $11 AND state IN ('approved', 'signing') RETURNING id)"
                ),
                |q| q.bind(e.tx),
            )
            .await?;
        if entered != 1 {
            return Ok(SigningEntry::Closed);
        }
        tx.commit().await?;
        Ok(SigningEntry::Entered)
    }

    /// Several entries (of distinct transactions) in one database transaction:
    /// each claim, then one statement that moves every transaction to `signing`
    /// with its audit record. `false`, with nothing written, when a session was
    /// used before or a transaction ended here.
    async fn sessions_entered_together(
        &self,
        entries: Vec<SessionEntry>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool().begin().await?;
        for e in &entries {
            if !claim_session(&mut tx, e).await? {
                return Ok(false);
            }
        }
        let ids: Vec<Uuid> = entries.iter().map(|e| e.tx).collect();
        let audits = entries.into_iter().map(|e| e.audit).collect();
        let moved = AuditOf::append_many_with(
            audits,
            &mut tx,
            super::audit::audited_group_statement!(
                "s AS (SELECT * FROM unnest($11::uuid[]) AS s(id)), \
                 done AS (UPDATE transactions tr SET state = 'signing' FROM s \
                          WHERE tr.id = s.id AND tr.state IN ('approved', 'signing') \
                          RETURNING tr.id)"
            ),
            |q| q.bind(ids.clone()),
        )
        .await?;
        match moved {
            Some((n, _)) if usize::try_from(n).ok() == Some(ids.len()) => {}
            _ => return Ok(false),
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Whether signing session id `session` was claimed here before.
    pub async fn signing_session_used(&self, session: Uuid) -> Result<bool, StoreError> {
        let (used,): (bool,) =
            sqlx::query_as("SELECT EXISTS (SELECT 1 FROM signing_sessions WHERE session_id = $1)")
                .bind(session)
                .fetch_one(self.pool())
                .await?;
        Ok(used)
    }

    /// Records that this node approves the unsigned transaction `txid` under
    /// `data_hash` (see [`wallet::ValidatedPsbt::approval_data_hash`]) for
    /// transaction `id`. When this node already approved that txid under other
    /// data, records nothing and returns the transaction of that first approval.
    /// Atomic: of two concurrent claims with different data, one loses.
    pub async fn claim_txid_approval(
        &self,
        txid: &str,
        data_hash: &[u8; 32],
        id: Uuid,
    ) -> Result<Option<Uuid>, StoreError> {
        sqlx::query(
            "INSERT INTO approved_txids (txid, data_hash, transaction_id) VALUES ($1, $2, $3) \
             ON CONFLICT (txid) DO NOTHING",
        )
        .bind(txid)
        .bind(data_hash.as_slice())
        .bind(id)
        .execute(self.pool())
        .await
        .map_err(|e| StoreError::classify(e, "txid approval"))?;
        self.txid_approved_with_other_data(txid, data_hash).await
    }

    /// The transaction under which this node approved `txid` with data other than
    /// `data_hash`, if it did (read only; see [`Store::claim_txid_approval`]).
    pub async fn txid_approved_with_other_data(
        &self,
        txid: &str,
        data_hash: &[u8; 32],
    ) -> Result<Option<Uuid>, StoreError> {
        let row: Option<(Vec<u8>, Uuid)> =
            sqlx::query_as("SELECT data_hash, transaction_id FROM approved_txids WHERE txid = $1")
                .bind(txid)
                .fetch_optional(self.pool())
                .await?;
        Ok(row.and_then(|(h, first)| (h.as_slice() != data_hash.as_slice()).then_some(first)))
    }

    /// At start: every transaction left in flight (`pending`, `voting`, `approved`,
    /// `signing`) is expired, its open rounds closed as expired and each audited
    /// (`tx.expired`, reason `node_restart`), in one database transaction. Inputs of
    /// transactions that had not reached `signing` are released; those of a
    /// transaction in `signing` stay reserved (a partial signature may have left
    /// this node, so the inputs may still be spent by it). Returns how many.
    pub async fn expire_in_flight(&self, node_id: &str) -> Result<u64, StoreError> {
        let mut tx = self.pool().begin().await?;
        let rows: Vec<(Uuid, String)> = sqlx::query_as(
            "SELECT id, state FROM transactions \
             WHERE state IN ('pending', 'voting', 'approved', 'signing') ORDER BY created_at \
             FOR UPDATE",
        )
        .fetch_all(&mut *tx)
        .await?;
        for (id, state) in &rows {
            set_transaction_state(
                &mut *tx,
                *id,
                "expired",
                Some("node restarted with the transaction in flight"),
            )
            .await?;
            sqlx::query(
                "UPDATE voting_rounds SET state = 'expired', closed_at = now() \
                 WHERE transaction_id = $1 AND state = 'open'",
            )
            .bind(id)
            .execute(&mut *tx)
            .await?;
            if state != "signing" {
                super::utxos::release_reserved(&mut *tx, *id).await?;
            }
            super::audit::append_audit(
                &mut tx,
                node_id,
                crate::audit::AuditEntry::new("node", "tx.expired")
                    .subject(id.to_string())
                    .details(serde_json::json!({ "reason": "node_restart", "from": state })),
            )
            .await?;
        }
        tx.commit().await?;
        self.released();
        Ok(u64::try_from(rows.len()).unwrap_or(u64::MAX))
    }

    /// Marks a transaction signed with its final form, audited, in one transaction;
    /// the UTXOs it spends are marked spent. Grouped with the `signed` records other
    /// callers are writing (see [`super::groups`]): one statement, one commit and one
    /// hold of the audit lock for the group, each transaction still moved, checked by
    /// the state machine and audited on its own. Returns once this record is
    /// committed; a group that fails is written again one record at a time, so a
    /// transaction that cannot be signed here fails alone.
    pub async fn transaction_signed(
        &self,
        node_id: &str,
        id: Uuid,
        signed_tx: &[u8],
        txid: &str,
        signed_psbt: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        let record = SignedRecord {
            node_id: node_id.to_owned(),
            id,
            signed_tx: signed_tx.to_vec(),
            txid: txid.to_owned(),
            signed_psbt: signed_psbt.map(<[u8]>::to_vec),
        };
        let store = self.clone();
        Groups::submit_or_alone(
            &self.signed_records,
            record,
            |r: &SignedRecord| r.id,
            move |group| {
                let store = store.clone();
                async move { store.write_signed_group(group).await }
            },
            |record| async move { self.transaction_signed_alone(&record).await },
        )
        .await
    }

    /// One group of `signed` records (see [`Store::transaction_signed`]).
    async fn write_signed_group(&self, group: Vec<Waiting<SignedRecord, Result<(), StoreError>>>) {
        write_together_or_alone(
            group,
            |records| async move {
                let n = records.len();
                let all = self.transactions_signed_together(records).await?;
                Ok(all_written(all, n, || Ok(())))
            },
            |r| async move { self.transaction_signed_alone(&r).await },
        )
        .await;
    }

    /// Several `signed` records in one statement and one commit: `false`, with
    /// nothing written, when they are not all of one node.
    async fn transactions_signed_together(
        &self,
        records: Vec<SignedRecord>,
    ) -> Result<bool, StoreError> {
        let Some(first) = records.first() else {
            return Ok(true);
        };
        if records.iter().any(|r| r.node_id != first.node_id) {
            return Ok(false);
        }
        let entries = records.iter().map(signed_entry).collect();
        let ids: Vec<Uuid> = records.iter().map(|r| r.id).collect();
        let raws: Vec<Vec<u8>> = records.iter().map(|r| r.signed_tx.clone()).collect();
        let txids: Vec<String> = records.iter().map(|r| r.txid.clone()).collect();
        let psbts: Vec<Option<Vec<u8>>> = records.iter().map(|r| r.signed_psbt.clone()).collect();
        let mut tx = self.pool().begin().await?;
        let (moved, _) = super::audit::append_audit_many_with(
            &mut tx,
            &first.node_id,
            entries,
            super::audit::audited_group_statement!(
                "s AS (SELECT * FROM unnest($11::uuid[], $12::bytea[], $13::text[], $14::bytea[]) \
                       AS s(id, signed_tx, txid, signed_psbt)), \
                 t AS (UPDATE transactions tr SET state = 'signed', signed_tx = s.signed_tx, \
                              txid = s.txid, signed_psbt = COALESCE(s.signed_psbt, tr.signed_psbt) \
                       FROM s WHERE tr.id = s.id RETURNING tr.id), \
                 u AS (UPDATE utxos SET state = 'spent' WHERE reserved_by = ANY($11) RETURNING 1), \
                 done AS (SELECT id FROM t WHERE (SELECT count(*) FROM u) >= 0)"
            ),
            |q| q.bind(ids).bind(raws).bind(txids).bind(psbts),
        )
        .await?;
        // Every transaction of the group must exist here (a missing one is
        // written, and answered, on its own).
        if usize::try_from(moved).ok() != Some(records.len()) {
            return Ok(false);
        }
        tx.commit().await?;
        Ok(true)
    }

    /// One `signed` record in its own statement and commit.
    async fn transaction_signed_alone(&self, r: &SignedRecord) -> Result<(), StoreError> {
        // The move to `signed`, the inputs marked spent and the audit record: one
        // statement (issue 21).
        let mut tx = self.pool().begin().await?;
        super::audit::append_audit_with(
            &mut tx,
            &r.node_id,
            signed_entry(r),
            super::audit::audited_statement!(
                "t AS (UPDATE transactions SET state = 'signed', signed_tx = $12, txid = $13, \
                              signed_psbt = COALESCE($14, signed_psbt) \
                       WHERE id = $11 RETURNING id), \
                 u AS (UPDATE utxos SET state = 'spent' WHERE reserved_by = $11 RETURNING 1), \
                 done AS (SELECT id FROM t WHERE (SELECT count(*) FROM u) >= 0)"
            ),
            |q| {
                q.bind(r.id)
                    .bind(r.signed_tx.as_slice())
                    .bind(r.txid.as_str())
                    .bind(r.signed_psbt.as_deref())
            },
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Marks a transaction failed (from any state that allows it), audited, and
    /// releases its reserved UTXOs.
    pub async fn transaction_failed(
        &self,
        node_id: &str,
        id: Uuid,
        reason: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        sqlx::query("UPDATE transactions SET state = 'failed', failure_reason = $2 WHERE id = $1")
            .bind(id)
            .bind(reason)
            .execute(&mut *tx)
            .await
            .map_err(|e| StoreError::classify(e, "transaction"))?;
        super::utxos::release_reserved(&mut *tx, id).await?;
        super::audit::append_audit(
            &mut tx,
            node_id,
            crate::audit::AuditEntry::new("node", "tx.failed")
                .subject(id.to_string())
                .details(serde_json::json!({ "reason": reason })),
        )
        .await?;
        tx.commit().await?;
        self.released();
        Ok(())
    }

    /// Transactions in `state` that carry their final form (`signed` or later),
    /// oldest first, at most `limit`: `(id, txid, signed transaction)`.
    pub async fn signed_in_state(
        &self,
        state: &str,
        limit: i64,
    ) -> Result<Vec<(Uuid, String, Vec<u8>)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT id, txid, signed_tx FROM transactions \
             WHERE state = $1 AND txid IS NOT NULL AND signed_tx IS NOT NULL \
             ORDER BY created_at, id LIMIT $2",
        )
        .bind(state)
        .bind(limit)
        .fetch_all(self.pool())
        .await?)
    }

    /// Moves a transaction from `from` to `to` and appends the audit entry
    /// `action` with `details`, in one database transaction. Returns false (and
    /// changes nothing) when the transaction is no longer in `from`, so repeating
    /// the call is harmless.
    pub async fn advance_transaction(
        &self,
        node_id: &str,
        id: Uuid,
        from: &str,
        to: &str,
        action: &str,
        details: serde_json::Value,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool().begin().await?;
        let done = sqlx::query("UPDATE transactions SET state = $3 WHERE id = $1 AND state = $2")
            .bind(id)
            .bind(from)
            .bind(to)
            .execute(&mut *tx)
            .await
            .map_err(|e| StoreError::classify(e, "transaction"))?;
        if done.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        super::audit::append_audit(
            &mut tx,
            node_id,
            crate::audit::AuditEntry::new("node", action)
                .subject(id.to_string())
                .details(details),
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// The final transaction (hex) and the signed, unfinalized PSBT (base64), once
    /// signed.
    pub async fn signed_forms(
        &self,
        id: Uuid,
    ) -> Result<(Option<String>, Option<String>), StoreError> {
        use base64::Engine as _;
        type Forms = (Option<Vec<u8>>, Option<Vec<u8>>);
        let row: Option<Forms> =
            sqlx::query_as("SELECT signed_tx, signed_psbt FROM transactions WHERE id = $1")
                .bind(id)
                .fetch_optional(self.pool())
                .await?;
        let (tx, psbt) = row.unwrap_or_default();
        Ok((
            tx.map(hex::encode),
            psbt.map(|p| base64::engine::general_purpose::STANDARD.encode(p)),
        ))
    }
}

/// Moves transaction `id` to state `to` (keeping an earlier failure reason unless
/// `failure_reason` is given), in a pool or inside a database transaction.
pub(super) async fn set_transaction_state<'e, E: sqlx::PgExecutor<'e>>(
    ex: E,
    id: Uuid,
    to: &str,
    failure_reason: Option<&str>,
) -> Result<(), StoreError> {
    let done = sqlx::query(
        "UPDATE transactions SET state = $2, failure_reason = COALESCE($3, failure_reason) \
         WHERE id = $1",
    )
    .bind(id)
    .bind(to)
    .bind(failure_reason)
    .execute(ex)
    .await
    .map_err(|e| StoreError::classify(e, "transaction"))?;
    if done.rows_affected() == 0 {
        return Err(StoreError::NotFound {
            what: "transaction",
            id: id.to_string(),
        });
    }
    Ok(())
}

/// What an approving vote commits its node to ([`Store::record_own_vote`]).
#[derive(Debug, Clone, Copy)]
pub struct ApprovalClaim<'a> {
    /// The unsigned transaction's id.
    pub txid: &'a str,
    /// Hash of the data it is approved under (amounts, scripts, sighashes).
    pub data_hash: &'a [u8; 32],
    /// Key that spends.
    pub key_id: &'a str,
    /// What the velocity windows count.
    pub outflow_sats: u64,
}

/// A signing session a leader asked this node to serve: its id, bound to one
/// transaction, input, signer set and leader.
#[derive(Debug, Clone, Copy)]
pub struct SessionClaim<'a> {
    /// The session id (the protocol run's execution id is derived from it).
    pub session: Uuid,
    /// The transaction.
    pub tx: Uuid,
    /// The input index.
    pub input: u32,
    /// The signer set, in the leader's order.
    pub signers: &'a [String],
    /// The node that asked.
    pub leader: &'a str,
}

/// What [`Store::enter_signing_session`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SigningEntry {
    /// Session claimed, transaction in `signing`, audit row appended (one commit).
    Entered,
    /// The session id was used before; nothing written.
    SessionUsed,
    /// The transaction is not `approved` or `signing` here; nothing written.
    Closed,
}

/// Result of [`Store::record_own_vote`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum VoteRecord {
    /// The vote's writes committed.
    Recorded,
    /// The txid was approved here under other data, by this transaction: nothing
    /// was written.
    TxidApprovedWithOtherData(Uuid),
}

/// Why a transaction's outflow counts against its key's velocity windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OutflowReason {
    /// This node voted approve.
    OwnApprove,
    /// This node saw a quorum of approvals (whatever it voted itself).
    QuorumApproved,
}

impl OutflowReason {
    /// Stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            OutflowReason::OwnApprove => "own_approve",
            OutflowReason::QuorumApproved => "quorum_approved",
        }
    }
}

/// Counts transaction `id`'s outflow against key `key_id`'s velocity windows (once:
/// a second count of the same transaction is a no-op).
pub(super) async fn insert_outflow(
    conn: &mut sqlx::PgConnection,
    id: Uuid,
    key_id: &str,
    outflow_sats: u64,
    counted_for: OutflowReason,
) -> Result<(), StoreError> {
    let amount = outflow_amount(id, outflow_sats)?;
    sqlx::query(
        "INSERT INTO outflows (transaction_id, key_id, outflow_sats, counted_for) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (transaction_id) DO NOTHING",
    )
    .bind(id)
    .bind(key_id)
    .bind(amount)
    .bind(counted_for.as_str())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// An outflow as the `BIGINT` it is stored as.
fn outflow_amount(id: Uuid, outflow_sats: u64) -> Result<i64, StoreError> {
    i64::try_from(outflow_sats)
        .map_err(|_| StoreError::Corrupt(format!("outflow of {id} does not fit a BIGINT")))
}

/// The key and amount columns of transaction `id`'s outflow count, when there is
/// one to write (`NULL`s otherwise: an audited statement writes no count then).
pub(super) fn outflow_columns(
    id: Uuid,
    outflow: Option<(&str, u64)>,
) -> Result<(Option<&str>, Option<i64>), StoreError> {
    match outflow {
        Some((key_id, sats)) => Ok((Some(key_id), Some(outflow_amount(id, sats)?))),
        None => Ok((None, None)),
    }
}

/// Inserts a transaction row in state `pending`.
async fn insert_row(conn: &mut sqlx::PgConnection, tx: &NewTransaction) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO transactions (id, key_id, recipient, amount_sats, fee_sats, psbt, initiator) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(tx.id)
    .bind(&tx.key_id)
    .bind(&tx.recipient)
    .bind(tx.amount_sats)
    .bind(tx.fee_sats)
    .bind(&tx.psbt)
    .bind(&tx.initiator)
    .execute(&mut *conn)
    .await
    .map_err(|e| StoreError::classify(e, "transaction"))?;
    Ok(())
}

/// Inserts `rows` in state `pending` in one statement; how many were inserted.
pub(super) async fn insert_rows(
    conn: &mut sqlx::PgConnection,
    rows: &[&NewTransaction],
) -> Result<u64, StoreError> {
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let key_ids: Vec<Option<&str>> = rows.iter().map(|r| r.key_id.as_deref()).collect();
    let recipients: Vec<Option<&str>> = rows.iter().map(|r| r.recipient.as_deref()).collect();
    let amounts: Vec<Option<i64>> = rows.iter().map(|r| r.amount_sats).collect();
    let fees: Vec<Option<i64>> = rows.iter().map(|r| r.fee_sats).collect();
    let psbts: Vec<Option<&[u8]>> = rows.iter().map(|r| r.psbt.as_deref()).collect();
    let initiators: Vec<&str> = rows.iter().map(|r| r.initiator.as_str()).collect();
    Ok(sqlx::query(
        "INSERT INTO transactions (id, key_id, recipient, amount_sats, fee_sats, psbt, initiator) \
         SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], \
                              $6::bytea[], $7::text[])",
    )
    .bind(&ids)
    .bind(&key_ids)
    .bind(&recipients)
    .bind(&amounts)
    .bind(&fees)
    .bind(&psbts)
    .bind(&initiators)
    .execute(&mut *conn)
    .await
    .map_err(|e| StoreError::classify(e, "transaction"))?
    .rows_affected())
}

/// Claims signing session `e.session` inside the caller's database transaction;
/// `false` when the id was used before (by anything).
async fn claim_session(
    conn: &mut sqlx::PgConnection,
    e: &SessionEntry,
) -> Result<bool, StoreError> {
    let claimed = sqlx::query(
        "INSERT INTO signing_sessions (session_id, transaction_id, input_index, signers, leader) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (session_id) DO NOTHING",
    )
    .bind(e.session)
    .bind(e.tx)
    .bind(e.input)
    .bind(&e.signers)
    .bind(&e.leader)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(claimed == 1)
}

/// A signing entry waiting for its group (see [`Store::enter_signing_session`]).
#[derive(Debug, Clone)]
pub(crate) struct SessionEntry {
    session: Uuid,
    tx: Uuid,
    input: i32,
    signers: Vec<String>,
    leader: String,
    audit: AuditOf,
}

/// Most signing entries one group writes.
const MAX_SESSION_GROUP: usize = 64;

/// The signing entries waiting for a write (see [`Groups`]).
pub(crate) type SessionEntries = Groups<SessionEntry, Result<SigningEntry, StoreError>>;

/// A fresh queue.
pub(crate) fn session_entries() -> SessionEntries {
    Groups::new(MAX_SESSION_GROUP)
}

/// A leader's new transaction waiting for its group (see
/// [`Store::insert_submitted_transaction`]).
#[derive(Debug, Clone)]
pub(crate) struct Submitted {
    new: NewTransaction,
    reserve: Vec<bitcoin::OutPoint>,
    audit: AuditOf,
}

/// Most submissions one group writes (far above the intake's turns).
const MAX_SUBMITTED_GROUP: usize = 64;

/// The submissions waiting for a write (see [`Groups`]).
pub(crate) type Submissions = Groups<Submitted, Result<(), StoreError>>;

/// A fresh queue.
pub(crate) fn submissions() -> Submissions {
    Groups::new(MAX_SUBMITTED_GROUP)
}

/// A transaction's `signed` record waiting for its group.
#[derive(Debug, Clone)]
pub(crate) struct SignedRecord {
    node_id: String,
    id: Uuid,
    signed_tx: Vec<u8>,
    txid: String,
    signed_psbt: Option<Vec<u8>>,
}

/// Most `signed` records one statement writes.
const MAX_SIGNED_GROUP: usize = 64;

/// The `signed` records waiting for a write (see [`Groups`]).
pub(crate) type SignedRecords = Groups<SignedRecord, Result<(), StoreError>>;

/// A fresh queue.
pub(crate) fn signed_records() -> SignedRecords {
    Groups::new(MAX_SIGNED_GROUP)
}

/// The audit entry of a `signed` record.
fn signed_entry(r: &SignedRecord) -> crate::audit::AuditEntry {
    crate::audit::AuditEntry::new("node", "tx.signed")
        .subject(r.id.to_string())
        .details(serde_json::json!({ "txid": r.txid }))
}
