//! Fault injection for the Byzantine tests, compiled only with the cargo feature
//! `fault-injection`, and obeyed only by a process that called [`arm`].
//!
//! Two locks (issue 16, finding 10): `make build` (`cargo build -p signer --bins`)
//! and release builds compile `signer` without the feature, so its binary does not
//! contain this code; and even a `signer` binary compiled with it (the workspace
//! build of `cargo test --workspace` unifies the test crate's features into it)
//! never calls [`arm`], so it ignores every `SIGNER_FAULT_*` variable and logs that
//! it did. Only the test crate's own binary `signer-faulty` (tests/bin/signer_faulty.rs)
//! arms it; the cluster tests run that binary.
//!
//! With the feature and armed, the environment variable
//! `SIGNER_FAULT_CORRUPT_OUTGOING=<protocol>` (e.g. `frost`, `cggmp24`, `aux_info`)
//! makes this node replace every protocol message it sends in ceremonies of that
//! protocol with bytes that do not decode, so the tests can check that honest nodes
//! abort and blame this node. The node logs an error at start when a fault is armed.
//!
//! [`KILL_AT_ENV`] and [`FREEZE_AT_ENV`] (`<protocol>:<n>`, protocol one of
//! `cggmp24`, `frost`, `aux_info`, `ecdsa_presign`, `ecdsa_sign`, `frost_sign`) stop
//! this node at a chosen protocol round: right after its n-th outgoing protocol
//! message of that protocol was handed to every recipient (a broadcast counts once),
//! it SIGKILLs itself, or SIGSTOPs itself (the test SIGCONTs it later). The count
//! is per run (per session id): `frost_sign:2` is the second message of whichever
//! FROST signing run this node takes part in, not the second over the process's
//! life. Each fires once per process.
//!
//! [`EQUIVOCATE_ENV`] (`<protocol>`) makes this node send its first broadcast of
//! each run of that protocol (round 1) in two versions: the genuine one to every
//! other recipient, one with its last byte changed to the rest (each copy with this
//! node's signed statement of it, `session::equivocation`, so the others can prove
//! it). [`FORGE_EVIDENCE_ENV`] (`<node id>`) makes this node add forged statements
//! in that node's name to the equivocation evidence it sends.
//!
//! Reshare outcome (docs/RESHARING.md): [`DROP_RESHARE_CONFIRM_ENV`] drops inbound
//! reshare confirmations (the node ends `uncertain`), [`RESHARE_STALL_ENV`] stalls
//! before the node stores its confirmation, [`RESHARE_OUTCOME_LIE_ENV`] and
//! [`RESHARE_OUTCOME_FORGE_ENV`] make its outcome answers lie or carry a signature
//! by a key that is not its vote key.
//!
//! Cheating reshare dealer (docs/RESHARING.md, "Checks in round 1"):
//! [`RESHARE_WRONG_SUB_SHARE_ENV`] (`<node id>`) makes this node, when it deals in a
//! reshare, send that receiver a wrong sub-share; [`RESHARE_COMMITMENTS_ENV`]
//! (`<count>`) makes it deal a consistent polynomial with `count` coefficients
//! instead of t' (commitments of the wrong degree). Both are signed by the dealer,
//! as a real cheater would (`signer_protocol::reshare::DealerFault`).
//!
//! [`DOUBLE_VOTE_ENV`] and [`FORGE_VOTE_ENV`] make this node misbehave in transaction
//! votes (a second, opposite vote; votes forged in another node's name or signed with
//! the wrong key), so the tests can check honest nodes record and ignore them.
//!
//! [`crate::crash::KILL_BEFORE_COMMIT_ENV`] kills this node inside a batch write,
//! before its commit (the crash points live in [`crate::crash`], below the store).
//!
//! [`WIRE_LEVEL_ENV`] (`1`) makes this node play a release before the batch frames:
//! it offers only P2P wire level 1 and drops frames of a higher level, for the
//! rolling upgrade test.

use bytes::Bytes;

/// Environment variable arming the fault.
pub const CORRUPT_ENV: &str = "SIGNER_FAULT_CORRUPT_OUTGOING";

/// Prefix of every fault variable.
pub const FAULT_ENV_PREFIX: &str = "SIGNER_FAULT_";

/// Lets this process obey `SIGNER_FAULT_*` variables. Called only by the test
/// binary `signer-faulty`; the `signer` binary never calls it.
#[cfg(feature = "fault-injection")]
pub fn arm() {
    crate::crash::arm();
}

/// Whether this process obeys fault variables.
pub fn is_armed() -> bool {
    crate::crash::is_armed()
}

#[cfg(feature = "fault-injection")]
pub(crate) use crate::crash::fault_var;

/// The payload to send for `protocol`: unchanged unless a corruption fault is armed
/// for it (feature `fault-injection` only).
#[cfg(feature = "fault-injection")]
pub fn corrupt_outgoing(protocol: &str, payload: Bytes) -> Bytes {
    match fault_var(CORRUPT_ENV) {
        Some(p) if p == protocol => Bytes::from_static(b"\x01corrupted by fault injection"),
        _ if armed(BAD_PARTIAL_ENV) && matches!(protocol, "ecdsa_sign" | "frost_sign") => {
            Bytes::from_static(b"\x01corrupted by fault injection")
        }
        _ => payload,
    }
}

/// The payload to send: always unchanged (built without `fault-injection`).
#[cfg(not(feature = "fault-injection"))]
pub fn corrupt_outgoing(_protocol: &str, payload: Bytes) -> Bytes {
    payload
}

/// Logs loudly when a fault is armed (feature `fault-injection` only), and says so
/// when `SIGNER_FAULT_*` variables are set in a process that ignores them.
pub fn warn_if_armed() {
    if !is_armed() {
        let ignored: Vec<String> = std::env::vars_os()
            .filter_map(|(k, _)| k.into_string().ok())
            .filter(|k| k.starts_with(FAULT_ENV_PREFIX))
            .collect();
        if !ignored.is_empty() {
            tracing::warn!(
                variables = ?ignored,
                "fault injection variables ignored: this binary does not obey fault injection"
            );
        }
    } else {
        log_armed();
    }
}

/// Logs each armed fault.
#[cfg(not(feature = "fault-injection"))]
fn log_armed() {}

/// Logs each armed fault.
#[cfg(feature = "fault-injection")]
fn log_armed() {
    if let Some(p) = fault_var(CORRUPT_ENV) {
        tracing::error!(protocol = %p, "FAULT INJECTION ARMED: this node corrupts its outgoing protocol messages");
    }
    for var in [DOUBLE_VOTE_ENV, FORGE_VOTE_ENV, FLOOD_PEERS_ENV] {
        if fault_var(var).is_some() {
            tracing::error!(
                fault = var,
                "FAULT INJECTION ARMED: this node sends Byzantine votes"
            );
        }
    }
    for var in [
        SIGN_WITH_ENV,
        SKIP_INTAKE_CHECKS_ENV,
        LIE_DONE_ENV,
        BAD_PARTIAL_ENV,
        REPLAY_SIGN_REQUEST_ENV,
        FORGE_APPROVAL_ENV,
        PROPOSAL_DEADLINE_ENV,
        REPLAY_PROPOSAL_ENV,
        FORGE_SPENT_ENV,
        INTAKE_PAUSE_ENV,
    ] {
        if fault_var(var).is_some() {
            tracing::error!(
                fault = var,
                "FAULT INJECTION ARMED: this node is a malicious transaction leader"
            );
        }
    }
    for var in [
        RESHARE_STALL_ENV,
        DROP_RESHARE_CONFIRM_ENV,
        RESHARE_OUTCOME_LIE_ENV,
        RESHARE_OUTCOME_FORGE_ENV,
    ] {
        if fault_var(var).is_some() {
            tracing::error!(
                fault = var,
                "FAULT INJECTION ARMED: this node misbehaves in reshare confirmations"
            );
        }
    }
    for var in [RESHARE_WRONG_SUB_SHARE_ENV, RESHARE_COMMITMENTS_ENV] {
        if let Some(v) = fault_var(var) {
            tracing::error!(
                fault = var,
                value = %v,
                "FAULT INJECTION ARMED: this node cheats as a reshare dealer"
            );
        }
    }
    if let Some(p) = fault_var(EQUIVOCATE_ENV) {
        tracing::error!(protocol = %p, "FAULT INJECTION ARMED: this node equivocates in round 1");
    }
    if let Some(n) = fault_var(FORGE_EVIDENCE_ENV) {
        tracing::error!(node = %n, "FAULT INJECTION ARMED: this node forges equivocation evidence");
    }
    for var in [KILL_AT_ENV, FREEZE_AT_ENV] {
        if let Some(v) = fault_var(var) {
            tracing::error!(
                fault = var,
                at = %v,
                "FAULT INJECTION ARMED: this node stops itself at a protocol round"
            );
        }
    }
    if let Some(p) = fault_var(crate::crash::KILL_BEFORE_COMMIT_ENV) {
        tracing::error!(point = %p, "FAULT INJECTION ARMED: this node kills itself before a batch commit");
    }
    if fault_var(EXIT_AFTER_PRESIG_CONSUME_ENV).is_some() {
        tracing::error!(
            fault = EXIT_AFTER_PRESIG_CONSUME_ENV,
            "FAULT INJECTION ARMED: this node exits after consuming a presignature"
        );
    }
}

/// Environment variable: this node, after casting its honest vote, signs and sends a
/// second vote with the opposite decision (a double vote).
pub const DOUBLE_VOTE_ENV: &str = "SIGNER_FAULT_DOUBLE_VOTE";
/// Environment variable: this node, after casting its honest vote, sends forged
/// rejections: one in another participant's name, one in its own name signed with a
/// key that is not its pinned vote key.
pub const FORGE_VOTE_ENV: &str = "SIGNER_FAULT_FORGE_VOTES";

/// The Byzantine votes this node sends after its honest vote, when armed (feature
/// `fault-injection` only): a double vote signed with `vote_key`, and forgeries (in
/// another participant's name; in its own name with a stranger's key).
#[cfg(feature = "fault-injection")]
pub fn byzantine_votes(
    me: &str,
    participants: &[String],
    honest: &vote::SignedVote,
    vote_key: Option<&crate::custody::VoteKey>,
) -> Vec<vote::SignedVote> {
    use vote::{SignedVote, VoteDecision};
    let mut bad = Vec::new();
    if fault_var(DOUBLE_VOTE_ENV).is_some() {
        let mut body = honest.body().clone();
        body.decision = match body.decision {
            VoteDecision::Approve => VoteDecision::Reject,
            VoteDecision::Reject => VoteDecision::Approve,
        };
        if let Some(key) = vote_key {
            if let Ok(v) = SignedVote::sign(body, key) {
                bad.push(v);
            }
        }
    }
    if fault_var(FORGE_VOTE_ENV).is_some() {
        let stranger = ring::signature::Ed25519KeyPair::from_seed_unchecked(&[7; 32]);
        let other = participants.iter().find(|p| *p != me);
        if let (Ok(stranger), Some(other)) = (stranger, other) {
            let mut in_other_name = honest.body().clone();
            in_other_name.voter = other.clone();
            in_other_name.decision = VoteDecision::Reject;
            let mut own_name = honest.body().clone();
            own_name.decision = VoteDecision::Reject;
            for body in [in_other_name, own_name] {
                if let Ok(v) = SignedVote::sign(body, &stranger) {
                    bad.push(v);
                }
            }
        }
    }
    bad
}

/// No Byzantine votes (built without `fault-injection`).
#[cfg(not(feature = "fault-injection"))]
pub fn byzantine_votes(
    _me: &str,
    _participants: &[String],
    _honest: &vote::SignedVote,
    _vote_key: Option<&crate::custody::VoteKey>,
) -> Vec<vote::SignedVote> {
    Vec::new()
}

/// Environment variable: with `1`, the node exits right after it committed the
/// consumption of a presignature, before the partial signature is computed or sent.
/// With a file path, it does so only if it is the first to create that file (one
/// exit among all nodes armed with the same path; the file holds the node id).
pub const EXIT_AFTER_PRESIG_CONSUME_ENV: &str = "SIGNER_FAULT_EXIT_AFTER_PRESIG_CONSUME";

/// Exits the process if [`EXIT_AFTER_PRESIG_CONSUME_ENV`] is armed (feature
/// `fault-injection` only; a no-op otherwise).
pub fn exit_after_presig_consume(node_id: &str) {
    #[cfg(feature = "fault-injection")]
    if let Some(v) = fault_var(EXIT_AFTER_PRESIG_CONSUME_ENV) {
        use std::io::Write;
        let first = v == "1"
            || std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&v)
                .and_then(|mut f| f.write_all(node_id.as_bytes()))
                .is_ok();
        if first {
            tracing::error!("FAULT INJECTION: exiting after consuming a presignature");
            std::process::exit(86);
        }
    }
    #[cfg(not(feature = "fault-injection"))]
    let _ = node_id;
}

/// Environment variable: as a transaction's leader, this node adds the named node
/// (e.g. one that voted reject) to every signer set it picks, right after itself.
pub const SIGN_WITH_ENV: &str = "SIGNER_FAULT_SIGN_WITH";
/// Environment variable: as a leader, this node skips its intake proof of input
/// amounts and its one-approval-per-txid check (the other nodes must catch it).
pub const SKIP_INTAKE_CHECKS_ENV: &str = "SIGNER_FAULT_SKIP_INTAKE_CHECKS";
/// Environment variable: as a leader, this node proposes a voting deadline this
/// many seconds ahead instead of its configured one (negative: a deadline already
/// past, as a proposal delivered late would carry).
pub const PROPOSAL_DEADLINE_ENV: &str = "SIGNER_FAULT_PROPOSAL_DEADLINE_SECS";
/// Environment variable: this node adds, to the signed transactions it shares with
/// its peers ([`crate::tx::spent`]), a transaction spending its own available
/// UTXOs with a forged witness (the receivers must not believe it).
pub const FORGE_SPENT_ENV: &str = "SIGNER_FAULT_FORGE_SPENT";

/// Environment variable: as a leader, this node waits this many milliseconds after
/// a round closes approved before it starts signing (so every approval of a burst
/// is counted before any signing starts).
pub const SIGN_DELAY_ENV: &str = "SIGNER_FAULT_SIGN_DELAY_MS";

/// Waits as long as [`SIGN_DELAY_ENV`] says (feature `fault-injection` only; no wait
/// otherwise).
pub async fn sign_delay() {
    #[cfg(feature = "fault-injection")]
    if let Some(ms) = fault_var(SIGN_DELAY_ENV).and_then(|v| v.parse::<u64>().ok()) {
        tracing::error!(ms, "FAULT INJECTION: waiting before signing");
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
}

/// Environment variable: this node's warm-up waits this many seconds before it
/// builds an ECDSA share's precomputed tables (as a node on a loaded host takes a
/// minute), so its signing sessions run with the plain share meanwhile.
pub const PRECOMPUTE_DELAY_ENV: &str = "SIGNER_FAULT_PRECOMPUTE_DELAY_SECS";

/// Waits as long as [`PRECOMPUTE_DELAY_ENV`] says (feature `fault-injection` only;
/// no wait otherwise).
pub async fn precompute_delay() {
    #[cfg(feature = "fault-injection")]
    if let Some(s) = fault_var(PRECOMPUTE_DELAY_ENV).and_then(|v| v.parse::<u64>().ok()) {
        tracing::error!(
            secs = s,
            "FAULT INJECTION: waiting before building the precomputed tables"
        );
        tokio::time::sleep(std::time::Duration::from_secs(s)).await;
    }
}

/// Environment variable: as a leader, this node waits this many milliseconds after
/// a recipient + amount request selected its inputs and before it reserves them
/// (logging the outputs it chose), so a test can take one of them meanwhile.
pub const INTAKE_PAUSE_ENV: &str = "SIGNER_FAULT_INTAKE_PAUSE_MS";

/// Waits as long as [`INTAKE_PAUSE_ENV`] says, after logging `selected` (feature
/// `fault-injection` only; no wait otherwise).
pub async fn intake_pause(selected: &[bitcoin::OutPoint]) {
    #[cfg(feature = "fault-injection")]
    if let Some(ms) = fault_var(INTAKE_PAUSE_ENV).and_then(|v| v.parse::<u64>().ok()) {
        let selected: Vec<String> = selected.iter().map(ToString::to_string).collect();
        tracing::error!(
            ms,
            selected = %selected.join(","),
            "FAULT INJECTION: pausing between coin selection and reservation"
        );
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    #[cfg(not(feature = "fault-injection"))]
    let _ = selected;
}

/// Environment variable: the highest P2P wire level this node speaks (`1`: it plays
/// a node of the release before batch frames, for the rolling upgrade tests).
pub const WIRE_LEVEL_ENV: &str = "SIGNER_FAULT_WIRE_LEVEL";

/// The wire level [`WIRE_LEVEL_ENV`] sets (feature `fault-injection` only; `None`
/// otherwise or when it does not parse).
pub fn wire_level() -> Option<u8> {
    #[cfg(feature = "fault-injection")]
    if let Some(level) = fault_var(WIRE_LEVEL_ENV).and_then(|v| v.parse().ok()) {
        tracing::error!(
            level,
            "FAULT INJECTION: playing an older release's P2P wire level"
        );
        return Some(level);
    }
    None
}

/// Whether this node shares forged "signed" transactions with its peers
/// ([`FORGE_SPENT_ENV`], feature `fault-injection` only; built by
/// `crate::tx::spent`).
pub fn forge_spent() -> bool {
    #[cfg(feature = "fault-injection")]
    if armed(FORGE_SPENT_ENV) {
        return true;
    }
    false
}

/// Environment variable: as a leader, this node sends each proposal a second time
/// (same transaction id, a deadline a day later) after its own vote.
pub const REPLAY_PROPOSAL_ENV: &str = "SIGNER_FAULT_REPLAY_PROPOSAL";

#[cfg(feature = "fault-injection")]
fn armed(var: &str) -> bool {
    fault_var(var).is_some()
}

/// The signer set a leader uses: `approvers` unchanged, or with the node named by
/// [`SIGN_WITH_ENV`] placed second (feature `fault-injection` only).
pub fn sign_with(approvers: Vec<String>, me: &str) -> Vec<String> {
    if let Some(extra) = forced_signer() {
        tracing::error!(node = %extra, "FAULT INJECTION: naming a signer regardless of its vote");
        let mut out: Vec<String> = approvers.into_iter().filter(|n| *n != extra).collect();
        let at = usize::from(out.first().is_some_and(|n| n == me)).min(out.len());
        out.insert(at, extra);
        return out;
    }
    approvers
}

/// The node [`SIGN_WITH_ENV`] names (feature `fault-injection` only; `None` otherwise).
pub fn forced_signer() -> Option<String> {
    #[cfg(feature = "fault-injection")]
    if let Some(extra) = fault_var(SIGN_WITH_ENV) {
        return Some(extra);
    }
    None
}

/// Whether the leader's intake proof checks are skipped (feature `fault-injection`
/// with [`SKIP_INTAKE_CHECKS_ENV`] only).
pub fn skip_intake_checks() -> bool {
    #[cfg(feature = "fault-injection")]
    if armed(SKIP_INTAKE_CHECKS_ENV) {
        tracing::error!("FAULT INJECTION: skipping the intake proof of input amounts");
        return true;
    }
    false
}

/// The voting deadline a leader proposes: `honest`, or now + the seconds of
/// [`PROPOSAL_DEADLINE_ENV`] (feature `fault-injection` only).
pub fn proposal_deadline(honest: u64) -> u64 {
    #[cfg(feature = "fault-injection")]
    if let Some(secs) = fault_var(PROPOSAL_DEADLINE_ENV).and_then(|v| v.parse::<i64>().ok()) {
        tracing::error!(
            secs,
            "FAULT INJECTION: proposing a voting deadline of our own"
        );
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        return now.saturating_add_signed(secs);
    }
    honest
}

/// The deadline of a replayed copy of a proposal whose deadline is `deadline` (a
/// day later), when [`REPLAY_PROPOSAL_ENV`] is armed (feature `fault-injection`
/// only); the leader then sends that copy to the participants again.
pub fn replayed_deadline(deadline: u64) -> Option<u64> {
    #[cfg(feature = "fault-injection")]
    if armed(REPLAY_PROPOSAL_ENV) {
        tracing::error!("FAULT INJECTION: replaying a proposal");
        return Some(deadline.saturating_add(86_400));
    }
    let _ = deadline;
    None
}

/// Environment variable: as a leader, this node tells the participants that signing
/// failed when it succeeded (its own record says `signed`): the lie that must not
/// make followers forget an outflow they signed for.
pub const LIE_DONE_ENV: &str = "SIGNER_FAULT_LIE_DONE";

/// Whether a leader reports its signed transaction `id` as failed
/// ([`LIE_DONE_ENV`] armed; feature `fault-injection` only).
pub fn lie_about_result(id: uuid::Uuid) -> bool {
    #[cfg(feature = "fault-injection")]
    if armed(LIE_DONE_ENV) {
        tracing::error!(tx = %id, "FAULT INJECTION: reporting a signed transaction as failed");
        return true;
    }
    let _ = id;
    false
}

/// Environment variable: as a signer, this node sends a wrong partial signature
/// (presignature path: its 34-byte partial with the scalar changed) and garbage
/// messages in interactive ECDSA and FROST signing runs.
pub const BAD_PARTIAL_ENV: &str = "SIGNER_FAULT_BAD_PARTIAL";

/// The partial signature (34 bytes) this node sends: `partial`, or with its last
/// byte changed when [`BAD_PARTIAL_ENV`] is armed (feature `fault-injection` only).
pub fn tamper_partial(partial: Vec<u8>) -> Vec<u8> {
    #[cfg(feature = "fault-injection")]
    if armed(BAD_PARTIAL_ENV) {
        tracing::error!("FAULT INJECTION: sending a wrong partial signature");
        let mut p = partial;
        if let Some(last) = p.last_mut() {
            *last ^= 0x01;
        }
        return p;
    }
    partial
}

/// Environment variable: as a leader, this node sends every sign request of the
/// full protocol a second time, with the same session id, a few seconds after the
/// session ended.
pub const REPLAY_SIGN_REQUEST_ENV: &str = "SIGNER_FAULT_REPLAY_SIGN_REQUEST";

/// How long after a sign request a malicious leader replays it
/// ([`REPLAY_SIGN_REQUEST_ENV`] armed; feature `fault-injection` only).
pub fn replay_sign_request_after() -> Option<std::time::Duration> {
    #[cfg(feature = "fault-injection")]
    if armed(REPLAY_SIGN_REQUEST_ENV) {
        return Some(std::time::Duration::from_secs(3));
    }
    None
}

/// Environment variable: after relaying a genuine approval, this node relays two
/// forged ones: the same approver with a changed signature, and an unregistered
/// approver.
pub const FORGE_APPROVAL_ENV: &str = "SIGNER_FAULT_FORGE_APPROVAL";

/// The forged (approver, signature hex) pairs to relay after a genuine approval by
/// `approver` with `signature` ([`FORGE_APPROVAL_ENV`] armed; feature
/// `fault-injection` only).
pub fn forged_approvals(approver: &str, signature: &str) -> Vec<(String, String)> {
    #[cfg(feature = "fault-injection")]
    if armed(FORGE_APPROVAL_ENV) {
        let mut flipped = hex::decode(signature).unwrap_or_default();
        if let Some(b) = flipped.first_mut() {
            *b ^= 0x01;
        }
        return vec![
            (approver.to_owned(), hex::encode(flipped)),
            ("mallory".to_owned(), hex::encode([0u8; 64])),
        ];
    }
    let _ = (approver, signature);
    Vec::new()
}

/// Environment variable: this node floods every peer with frames of every kind
/// (early protocol frames of unknown sessions, junk ceremony and presignature
/// announcements, generate requests, sign requests and votes), in bursts larger
/// than a peer's queue quota, so the tests can check that the others keep signing
/// with bounded memory.
pub const FLOOD_PEERS_ENV: &str = "SIGNER_FAULT_FLOOD_PEERS";

/// Floods every peer while [`FLOOD_PEERS_ENV`] is armed (feature `fault-injection`
/// only; returns at once otherwise).
pub async fn flood_peers(net: std::sync::Arc<crate::net::Net>) {
    #[cfg(feature = "fault-injection")]
    if fault_var(FLOOD_PEERS_ENV).is_some() {
        use crate::p2p::{Frame, MessageKind};
        tracing::error!("FAULT INJECTION: flooding every peer");
        let junk = Bytes::from_static(b"\x00junk frame from a flooding peer");
        let generate = Bytes::from_static(
            br#"{"key_id":"flood","signer_set":["node-1","node-2"],"count":1000}"#,
        );
        let kinds = [
            MessageKind::KEYGEN,
            MessageKind::SIGN,
            MessageKind::PRESIGN,
            MessageKind::FROST_SIGN,
            MessageKind::SESSION_CONFIRM,
            MessageKind::CEREMONY_ANNOUNCE,
            MessageKind::PRESIGN_ANNOUNCE,
            MessageKind::PRESIGN_GENERATE,
            MessageKind::TX_SIGN,
            MessageKind::TX_PROPOSE,
            MessageKind::VOTE,
        ];
        loop {
            for peer in net.p2p.peer_ids() {
                for kind in kinds {
                    let payload = if kind == MessageKind::PRESIGN_GENERATE {
                        generate.clone()
                    } else {
                        junk.clone()
                    };
                    // One burst, all sends in flight at once, so they arrive together.
                    let burst = (0..600).map(|_| {
                        let f = Frame::new(uuid::Uuid::new_v4(), kind, payload.clone());
                        net.p2p.send(&peer, f)
                    });
                    let _ = futures::future::join_all(burst).await;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
    #[cfg(not(feature = "fault-injection"))]
    let _ = net;
}

/// `SIGNER_FAULT_RESHARE_PAUSE_SECS=<n>`: after this node stored its pending new share
/// and before it sends its reshare confirmation, it waits `n` seconds (so a test can
/// SIGKILL it midway, between the run and the switch).
pub const RESHARE_PAUSE_ENV: &str = "SIGNER_FAULT_RESHARE_PAUSE_SECS";

/// Waits as [`RESHARE_PAUSE_ENV`] says (feature `fault-injection`, armed only).
#[cfg(feature = "fault-injection")]
pub async fn reshare_pause_before_confirm() {
    if let Some(secs) = fault_var(RESHARE_PAUSE_ENV).and_then(|v| v.parse::<u64>().ok()) {
        tracing::error!(
            secs,
            "FAULT INJECTION: pausing before the reshare confirmation"
        );
        tokio::time::sleep(std::time::Duration::from_secs(secs)).await;
    }
}

/// Does nothing (built without `fault-injection`).
#[cfg(not(feature = "fault-injection"))]
pub async fn reshare_pause_before_confirm() {}

/// `SIGNER_FAULT_RESHARE_WRONG_SUB_SHARE=<node id>`: when this node deals in a
/// reshare, it sends that receiver a wrong sub-share (the right value + 1), signed
/// with its vote key like every other message (the receiver's Feldman check fails,
/// its complaint carries the signed value, every participant blames this node).
pub const RESHARE_WRONG_SUB_SHARE_ENV: &str = "SIGNER_FAULT_RESHARE_WRONG_SUB_SHARE";
/// `SIGNER_FAULT_RESHARE_COMMITMENTS=<count>`: when this node deals in a reshare,
/// it deals a consistent polynomial with `count` coefficients (and commitments)
/// instead of t', i.e. commitments of the wrong degree (CVE-2025-58359's class).
pub const RESHARE_COMMITMENTS_ENV: &str = "SIGNER_FAULT_RESHARE_COMMITMENTS";

/// The reshare party this node runs: `party`, or, when it deals (`deals`) and
/// [`RESHARE_WRONG_SUB_SHARE_ENV`] (a participant of `run_set`) or
/// [`RESHARE_COMMITMENTS_ENV`] is armed, the same party cheating as a dealer
/// (feature `fault-injection` only).
#[cfg(feature = "fault-injection")]
pub fn reshare_dealer(
    party: signer_protocol::reshare::ReshareParty,
    deals: bool,
    run_set: &[String],
) -> signer_protocol::reshare::ReshareParty {
    use signer_protocol::reshare::DealerFault;
    if !deals {
        return party;
    }
    if let Some(victim) = fault_var(RESHARE_WRONG_SUB_SHARE_ENV) {
        if let Some(receiver) = run_set
            .iter()
            .position(|p| *p == victim)
            .and_then(|r| u16::try_from(r).ok())
        {
            tracing::error!(receiver = %victim, "FAULT INJECTION: dealing a wrong reshare sub-share");
            return party.with_dealer_fault(DealerFault::WrongSubShare { receiver });
        }
    }
    if let Some(count) = fault_var(RESHARE_COMMITMENTS_ENV).and_then(|v| v.parse::<u16>().ok()) {
        tracing::error!(
            count,
            "FAULT INJECTION: dealing reshare commitments of the wrong degree"
        );
        return party.with_dealer_fault(DealerFault::CommitmentCount { count });
    }
    party
}

/// The reshare party unchanged (built without `fault-injection`).
#[cfg(not(feature = "fault-injection"))]
pub fn reshare_dealer(
    party: signer_protocol::reshare::ReshareParty,
    _deals: bool,
    _run_set: &[String],
) -> signer_protocol::reshare::ReshareParty {
    party
}

/// `SIGNER_FAULT_RESHARE_STALL_BEFORE_CONFIRM_SECS=<n>`: after its reshare run
/// succeeded and before it stores its pending share and confirmation, this node
/// waits `n` seconds, and its own reshare bound is longer by `n`: the others time
/// out waiting for its confirmation (and become `uncertain`) while it is still
/// `pending` without one, so their outcome queries make it fail the reshare.
pub const RESHARE_STALL_ENV: &str = "SIGNER_FAULT_RESHARE_STALL_BEFORE_CONFIRM_SECS";

/// `SIGNER_FAULT_DROP_RESHARE_CONFIRM=1`: this node drops every inbound confirmation
/// frame of a reshare session: it confirms, the others switch, it ends `uncertain`.
pub const DROP_RESHARE_CONFIRM_ENV: &str = "SIGNER_FAULT_DROP_RESHARE_CONFIRM";

/// The stall of [`RESHARE_STALL_ENV`] (zero unless armed with the feature).
pub fn reshare_stall_before_confirm() -> std::time::Duration {
    #[cfg(feature = "fault-injection")]
    {
        std::time::Duration::from_secs(
            fault_var(RESHARE_STALL_ENV)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0),
        )
    }
    #[cfg(not(feature = "fault-injection"))]
    {
        std::time::Duration::ZERO
    }
}

/// Waits as [`RESHARE_STALL_ENV`] says (feature `fault-injection`, armed only).
pub async fn reshare_stall() {
    let d = reshare_stall_before_confirm();
    if !d.is_zero() {
        tracing::error!(
            secs = d.as_secs(),
            "FAULT INJECTION: stalling before storing the reshare confirmation"
        );
        tokio::time::sleep(d).await;
    }
}

/// `SIGNER_FAULT_RESHARE_OUTCOME_LIE=<failed|unknown>`: this node answers every
/// reshare outcome query with that outcome (genuinely signed), whatever its state.
pub const RESHARE_OUTCOME_LIE_ENV: &str = "SIGNER_FAULT_RESHARE_OUTCOME_LIE";
/// `SIGNER_FAULT_RESHARE_OUTCOME_FORGE=1`: this node signs its outcome answers with
/// a fresh key that is not its pinned vote key (a forgery the asker must refuse).
pub const RESHARE_OUTCOME_FORGE_ENV: &str = "SIGNER_FAULT_RESHARE_OUTCOME_FORGE";

/// The outcome this node answers: `honest` unless [`RESHARE_OUTCOME_LIE_ENV`] is
/// armed (feature `fault-injection` only).
pub fn reshare_outcome_answer(
    honest: crate::store::reshare::LocalOutcome,
) -> crate::store::reshare::LocalOutcome {
    #[cfg(feature = "fault-injection")]
    {
        use crate::store::reshare::LocalOutcome;
        match fault_var(RESHARE_OUTCOME_LIE_ENV).as_deref() {
            Some("failed") => {
                tracing::error!("FAULT INJECTION: lying `failed` to a reshare outcome query");
                LocalOutcome::Failed
            }
            Some("unknown") => {
                tracing::error!("FAULT INJECTION: lying `unknown` to a reshare outcome query");
                LocalOutcome::Unknown
            }
            _ => honest,
        }
    }
    #[cfg(not(feature = "fault-injection"))]
    {
        honest
    }
}

/// Whether [`RESHARE_OUTCOME_FORGE_ENV`] is armed (feature `fault-injection` only).
pub fn reshare_outcome_forge() -> bool {
    #[cfg(feature = "fault-injection")]
    {
        fault_var(RESHARE_OUTCOME_FORGE_ENV).is_some()
    }
    #[cfg(not(feature = "fault-injection"))]
    {
        false
    }
}

/// Whether [`DROP_RESHARE_CONFIRM_ENV`] is armed (feature `fault-injection` only).
pub fn drop_reshare_confirm() -> bool {
    #[cfg(feature = "fault-injection")]
    {
        fault_var(DROP_RESHARE_CONFIRM_ENV).is_some()
    }
    #[cfg(not(feature = "fault-injection"))]
    {
        false
    }
}

/// Environment variable `<protocol>:<n>`: this node SIGKILLs itself right after its
/// n-th outgoing protocol message in a run of `protocol` was sent.
pub const KILL_AT_ENV: &str = "SIGNER_FAULT_KILL_AT";
/// Environment variable `<protocol>:<n>`: this node SIGSTOPs itself right after its
/// n-th outgoing protocol message in a run of `protocol` was sent (a test SIGCONTs it).
pub const FREEZE_AT_ENV: &str = "SIGNER_FAULT_FREEZE_AT";

/// Outgoing protocol messages sent per run `(protocol label, session)` (the most
/// recent [`RUNS_KEPT`] runs), and whether the stop fired.
#[cfg(feature = "fault-injection")]
static SENT: std::sync::Mutex<(Vec<RunCount>, bool)> = std::sync::Mutex::new((Vec::new(), false));

/// Messages sent in one run: `(protocol label, session, count)`.
#[cfg(feature = "fault-injection")]
type RunCount = (&'static str, uuid::Uuid, u32);

/// Runs whose message counts [`after_outgoing`] keeps.
#[cfg(feature = "fault-injection")]
const RUNS_KEPT: usize = 256;

/// `(protocol, n)` of a `<protocol>:<n>` fault value.
#[cfg(feature = "fault-injection")]
fn parse_at(v: &str) -> Option<(&str, u32)> {
    let (p, n) = v.split_once(':')?;
    Some((p, n.parse().ok().filter(|n| *n > 0)?))
}

/// Called by the session pump after it handed one outgoing message of run `session`
/// of `protocol` to every recipient (`sends` holds those sends): when
/// [`KILL_AT_ENV`] or [`FREEZE_AT_ENV`] names this message (its number within the
/// run), waits for the sends to finish, then kills or freezes this process (feature
/// `fault-injection` only; a no-op otherwise).
pub async fn after_outgoing(
    protocol: &'static str,
    session: uuid::Uuid,
    sends: &mut tokio::task::JoinSet<()>,
) {
    #[cfg(feature = "fault-injection")]
    {
        let kill = fault_var(KILL_AT_ENV);
        let freeze = fault_var(FREEZE_AT_ENV);
        if kill.is_none() && freeze.is_none() {
            return;
        }
        let fire = {
            let Ok(mut sent) = SENT.lock() else { return };
            let count = match sent
                .0
                .iter_mut()
                .find(|(p, s, _)| *p == protocol && *s == session)
            {
                Some((_, _, c)) => {
                    *c += 1;
                    *c
                }
                None => {
                    if sent.0.len() >= RUNS_KEPT {
                        sent.0.remove(0);
                    }
                    sent.0.push((protocol, session, 1));
                    1
                }
            };
            tracing::info!(
                protocol,
                %session,
                n = count,
                "FAULT INJECTION: outgoing protocol message sent"
            );
            let hit = |v: &Option<String>| {
                v.as_deref()
                    .and_then(parse_at)
                    .is_some_and(|(p, n)| p == protocol && n == count)
            };
            let signal = if hit(&kill) {
                Some(nix::sys::signal::Signal::SIGKILL)
            } else if hit(&freeze) {
                Some(nix::sys::signal::Signal::SIGSTOP)
            } else {
                None
            };
            match signal {
                Some(s) if !sent.1 => {
                    sent.1 = true;
                    Some((s, count))
                }
                _ => None,
            }
        };
        if let Some((signal, n)) = fire {
            while sends.join_next().await.is_some() {}
            tracing::error!(protocol, %session, n, %signal, "FAULT INJECTION: stopping this node at a protocol round");
            let _ = nix::sys::signal::raise(signal);
        }
    }
    #[cfg(not(feature = "fault-injection"))]
    let _ = (protocol, session, sends);
}

/// Environment variable `<protocol>`: this node sends different round-1 broadcasts
/// to different peers in runs of `protocol` (equivocation).
pub const EQUIVOCATE_ENV: &str = "SIGNER_FAULT_EQUIVOCATE";

/// Per session: the first broadcast frame's payload and how many copies went out.
#[cfg(feature = "fault-injection")]
static ROUND_ONE: std::sync::Mutex<Vec<(uuid::Uuid, Bytes, u32)>> =
    std::sync::Mutex::new(Vec::new());

/// The copy of `frame` (of a run of `protocol`) to send to one recipient: `frame`,
/// or, with [`EQUIVOCATE_ENV`] armed for `protocol`, every second copy of the run's
/// first broadcast with the last byte of its message changed (feature
/// `fault-injection` only).
pub fn equivocate(protocol: &str, frame: crate::p2p::Frame) -> crate::p2p::Frame {
    #[cfg(feature = "fault-injection")]
    if fault_var(EQUIVOCATE_ENV).as_deref() == Some(protocol) && frame.payload.first() == Some(&0) {
        let Ok(mut seen) = ROUND_ONE.lock() else {
            return frame;
        };
        let copy = match seen.iter_mut().find(|(id, _, _)| *id == frame.session) {
            Some((_, first, n)) if *first == frame.payload => {
                *n += 1;
                *n
            }
            Some(_) => return frame,
            None => {
                seen.push((frame.session, frame.payload.clone(), 1));
                1
            }
        };
        if copy % 2 == 0 {
            tracing::error!(session = %frame.session, copy, "FAULT INJECTION: equivocating in round 1");
            let mut bytes = frame.payload.to_vec();
            if let Some(last) = bytes.last_mut() {
                *last ^= 0x01;
            }
            return crate::p2p::Frame::new(frame.session, frame.kind, bytes);
        }
    }
    let _ = protocol;
    frame
}

/// Environment variable `<node id>`: when this node sends equivocation evidence
/// (a key ceremony failed without a culprit), it adds two forged statements in that
/// node's name: a genuine one of that node with its digest changed, and one signed
/// by a key that is not that node's (the receivers must blame nobody for them).
pub const FORGE_EVIDENCE_ENV: &str = "SIGNER_FAULT_FORGE_EVIDENCE";
