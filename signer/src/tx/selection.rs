//! Coin selection on the leader (issue 21): a recipient + amount request chooses
//! its inputs from an in-memory view of its key's largest selectable outputs,
//! read from the database once for many requests instead of once per request.
//!
//! The database stays the authority. An output of the view that was reserved or
//! spent by another path since the read (a PSBT naming it, another leader's
//! proposal, a spend seen on chain) fails the request's reservation, which
//! commits nothing; the request then drops the view and selects again from a
//! fresh read (see [`super::intake::submit`]). A view is read again after a
//! commit on this node that may have released outputs (a round closed other than
//! approved, a failure, an expiry: [`crate::store::Store::releases`]), after an
//! import, when it cannot cover a payment, and when it is older than `[wallet]
//! selection_view_ttl_ms` (default 1 s; 0 reads for every payment), so the
//! largest outputs are chosen first as with a read per payment.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::{IntakeClaims, TxCtx, TxError};

/// How many of a key's largest selectable outputs one read of a view takes (at
/// least `max_inputs`).
const VIEW_ROWS: usize = 256;

/// How many of the largest candidates a selection tries first (all of them, up
/// to `max_inputs`, when these do not cover the payment: selection is greedy from
/// the largest, so the choice is the same either way).
const FIRST_TRY: usize = 32;

/// One key's selectable outputs as read, minus the ones handed out since.
#[derive(Debug)]
pub struct SelectableView {
    /// The floor of the read (outputs worth more than their own input fee).
    above: u64,
    read_at: Instant,
    /// [`crate::store::Store::releases`] before the read: a release since then
    /// makes the view stale.
    releases: u64,
    /// Largest first.
    utxos: Vec<wallet::OwnedUtxo>,
    /// The read returned as many rows as it asked for (the key may have more).
    cut: bool,
}

/// The views of every key, kept with the intake claims (under the intake lock).
pub type Views = HashMap<String, SelectableView>;

/// What one request asks selection for.
pub(super) struct Payment<'a> {
    pub key: &'a wallet::WalletKey,
    pub recipient: &'a str,
    pub amount_sats: u64,
    pub fee_rate_sat_vb: u64,
    pub change_index: u32,
}

/// Chooses the inputs of `p` (under the intake lock, `claims` its state) and
/// builds its PSBT. The chosen outputs leave the view; the caller claims them.
pub(super) async fn select(
    node: &TxCtx,
    claims: &mut IntakeClaims,
    p: &Payment<'_>,
    limits: &wallet::IntakeLimits,
) -> Result<wallet::ValidatedPsbt, TxError> {
    let key_id = p.key.key_id();
    let above = p
        .fee_rate_sat_vb
        .saturating_mul(p.key.kind().input_vbytes());
    let ttl = Duration::from_millis(node.cfg.wallet.selection_view_ttl_ms);
    // Without a view (`ttl` 0), each payment reads only the largest few, and up
    // to `max_inputs` when those do not cover it (the choice is the same).
    let mut depth = if ttl.is_zero() {
        FIRST_TRY.min(limits.max_inputs)
    } else {
        VIEW_ROWS.max(limits.max_inputs)
    };
    let mut fresh = false;
    loop {
        let usable = claims.views.get(key_id).is_some_and(|v| {
            v.above == above && v.read_at.elapsed() < ttl && v.releases == node.store.releases()
        });
        if !usable {
            let view = read(node, claims, key_id, above, depth).await?;
            claims.views.insert(key_id.to_owned(), view);
            fresh = true;
        }
        let Some(view) = claims.views.get_mut(key_id) else {
            continue;
        };
        let candidates: Vec<&wallet::OwnedUtxo> = view
            .utxos
            .iter()
            .filter(|u| !claims.outpoints.contains(&u.outpoint))
            .take(limits.max_inputs)
            .collect();
        let build = |n: usize| {
            let utxos: Vec<wallet::OwnedUtxo> =
                candidates.iter().take(n).map(|u| (*u).clone()).collect();
            wallet::build_psbt(
                p.key,
                &utxos,
                p.recipient,
                p.amount_sats,
                p.fee_rate_sat_vb,
                p.change_index,
                limits,
            )
        };
        let built = match build(FIRST_TRY) {
            Err(wallet::WalletError::InsufficientFunds { .. }) if candidates.len() > FIRST_TRY => {
                build(candidates.len())
            }
            r => r,
        };
        match built {
            // The view may lack outputs released or imported since its read: read
            // again.
            Err(wallet::WalletError::InsufficientFunds { .. }) if !fresh => {
                claims.views.remove(key_id);
            }
            // A fresh read that stopped at its limit before `max_inputs`: read
            // deeper.
            Err(wallet::WalletError::InsufficientFunds { .. })
                if view.cut && depth < limits.max_inputs =>
            {
                depth = limits.max_inputs;
                claims.views.remove(key_id);
            }
            r => {
                let v = r?;
                view.utxos
                    .retain(|u| !v.inputs.iter().any(|i| i.outpoint == u.outpoint));
                return Ok(v);
            }
        }
    }
}

/// Reads a view of `key_id`'s `depth` largest selectable outputs worth more than
/// `above` (beyond `depth` by the number of claimed outputs, which it may
/// include).
async fn read(
    node: &TxCtx,
    claims: &IntakeClaims,
    key_id: &str,
    above: u64,
    depth: usize,
) -> Result<SelectableView, TxError> {
    let rows = depth.saturating_add(claims.outpoints.len());
    let releases = node.store.releases();
    node.tx
        .selection_reads
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let utxos = node
        .store
        .selectable_utxos(key_id, above, i64::try_from(rows).unwrap_or(i64::MAX))
        .await?;
    Ok(SelectableView {
        above,
        read_at: Instant::now(),
        releases,
        cut: utxos.len() >= rows,
        utxos,
    })
}

/// Forgets `key_id`'s view (its reservation found an output taken), or every
/// view (`None`: outputs were imported).
pub(crate) async fn forget(node: &TxCtx, key_id: Option<&str>) {
    let mut claims = node.tx.intake_lock.lock().await;
    match key_id {
        Some(k) => {
            claims.views.remove(k);
        }
        None => claims.views.clear(),
    }
}
