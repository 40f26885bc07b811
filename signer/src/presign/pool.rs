//! The background task: restore check at start, the restore watcher (rollbacks while
//! running, see [`watermark::watch`]), then refills of the pools this node leads
//! (signer sets whose lowest node id is this node).

use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use super::wire::{self, PresignSpec, MAX_BATCH, PRESIGN_ANNOUNCE};
use super::PresignCtx;
use super::{watermark, PresignError, SetKey};
use crate::p2p::Frame;

/// Bound of the delivery of an announce to one member.
pub const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(3);
/// Lease of a generation slot lock (kept alive while the session runs).
const SLOT_TTL: Duration = Duration::from_secs(10);

/// Runs the pool of this node until the process ends.
pub async fn run(node: Arc<PresignCtx>) {
    loop {
        match watermark::check_at_start(&node).await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(error = %e, "presignature restore check failed; retrying (no presignature is used meanwhile)");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
    let cfg = node.cfg.presign.clone();
    if !cfg.enabled {
        tracing::info!("presignature pool disabled");
        return;
    }
    let interval = Duration::from_secs(cfg.check_interval_secs.max(1));
    // Rollbacks of the database while running: checked every interval and whenever
    // a use saw one; presignatures stay stopped until the pool is discarded.
    tokio::spawn(watermark::watch(node.clone(), interval));
    loop {
        let mut busy = false;
        // No refill before the restore check ran (a rollback seen while running
        // discards every available presignature; new ones would go with them).
        if node.presign.restore_checked() && node.unsealed().is_some() && node.coord().is_some() {
            match refill_once(&node).await {
                Ok(generated) => busy = generated,
                Err(e) => tracing::debug!(error = %e, "presignature refill pass failed"),
            }
            node.presign.prune_requests();
        }
        if busy {
            // More may be wanted: check again right away.
            continue;
        }
        tokio::select! {
            _ = node.presign.wake.notified() => {}
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// All `t`-subsets of `items`, each in the order of `items`.
pub fn combinations(items: &[String], t: usize) -> Vec<Vec<String>> {
    fn go(
        items: &[String],
        t: usize,
        start: usize,
        cur: &mut Vec<String>,
        out: &mut Vec<Vec<String>>,
    ) {
        if cur.len() == t {
            out.push(cur.clone());
            return;
        }
        for i in start..items.len() {
            cur.push(items[i].clone());
            go(items, t, i + 1, cur, out);
            cur.pop();
        }
    }
    let mut out = Vec::new();
    if t > 0 && t <= items.len() {
        go(items, t, 0, &mut Vec::with_capacity(t), &mut out);
    }
    out
}

/// Paths the pool of `key_id` serves: those of the key's unspent known UTXOs (in
/// this node's `utxos` table, largest first), then the first receive address
/// `[0, 0]`, at most `[presign] max_paths`.
pub async fn plan_paths(node: &PresignCtx, key_id: &str) -> Result<Vec<Vec<u32>>, PresignError> {
    let max = node.cfg.presign.max_paths.max(1);
    let mut paths: Vec<Vec<u32>> = Vec::new();
    for u in node.store.available_utxos(key_id).await? {
        let p = vec![u.chain, u.index];
        if !paths.contains(&p) && super::valid_wallet_path(&p) {
            paths.push(p);
        }
    }
    let first = vec![0, 0];
    if !paths.contains(&first) {
        paths.push(first);
    }
    paths.truncate(max);
    Ok(paths)
}

/// One pass over every pool this node leads; true if it generated any.
async fn refill_once(node: &Arc<PresignCtx>) -> Result<bool, PresignError> {
    let mut generated = false;
    let me = node.cfg.node_id.clone();
    let cfg = &node.cfg.presign;
    for share in node.store.usable_shares(&me).await? {
        if share.protocol != "cggmp24"
            || node
                .store
                .latest_aux(&me, &share.participants)
                .await?
                .is_none()
        {
            continue;
        }
        let t = usize::try_from(share.threshold).unwrap_or(0);
        for set in combinations(&share.participants, t) {
            if set.iter().min() != Some(&me) {
                continue;
            }
            let connected = node.net.p2p.connected_peers();
            if !set.iter().all(|s| *s == me || connected.contains(s)) {
                continue;
            }
            let key: SetKey = (share.key_id.clone(), set.clone());
            let extra = node.presign.extra_for(&key);
            for (i, path) in plan_paths(node, &share.key_id)
                .await?
                .into_iter()
                .enumerate()
            {
                let avail = usize::try_from(
                    node.store
                        .presignatures_available(&share.key_id, &set, &path)
                        .await?,
                )
                .unwrap_or(0);
                let mut need = if avail < cfg.low_watermark.min(cfg.target).max(1) {
                    cfg.target.saturating_sub(avail)
                } else {
                    0
                };
                if i == 0 {
                    need += extra;
                }
                let count = need.min(cfg.batch.clamp(1, MAX_BATCH));
                if count == 0 {
                    continue;
                }
                if !node.presign.restore_checked() {
                    // A rollback was seen meanwhile: nothing more before the check.
                    return Ok(generated);
                }
                if lead_session(node, &share.key_id, &set, &path, count).await? == 0 {
                    // No generation slot free: try again at the next pass.
                    return Ok(generated);
                }
                generated = true;
            }
        }
    }
    Ok(generated)
}

/// Leads one session for `(key, set, path)`: takes a cluster-wide generation slot
/// (etcd lock), announces to the other members, runs this node's side. Returns the
/// number stored here (0 when no slot was free).
pub async fn lead_session(
    node: &Arc<PresignCtx>,
    key_id: &str,
    set: &[String],
    path: &[u32],
    count: usize,
) -> Result<usize, PresignError> {
    let coord = node
        .coord()
        .ok_or_else(|| PresignError::Coord("etcd not connected".into()))?;
    let mut guard = None;
    for slot in 0..node.cfg.presign.max_concurrent.max(1) {
        if let Ok(g) = coord
            .try_lock(
                &format!("presign-slot-{slot}"),
                SLOT_TTL,
                Duration::from_millis(300),
            )
            .await
        {
            guard = Some(g);
            break;
        }
    }
    let Some(guard) = guard else { return Ok(0) };
    let me = node.cfg.node_id.clone();
    let spec = PresignSpec {
        id: Uuid::new_v4(),
        key_id: key_id.to_owned(),
        signers: set.to_vec(),
        path: path.to_vec(),
        items: (0..count.clamp(1, MAX_BATCH))
            .map(|_| Uuid::new_v4())
            .collect(),
        leader: me.clone(),
    };
    tracing::debug!(session = %spec.id, key = %key_id, signers = ?set, ?path, count, "leading a presign session");
    let result = async {
        let payload = wire::encode(&spec).map_err(|e| PresignError::Invalid(e.to_string()))?;
        let frame = Frame::new(spec.id, PRESIGN_ANNOUNCE, payload);
        for peer in set.iter().filter(|p| **p != me) {
            match tokio::time::timeout(ANNOUNCE_TIMEOUT, node.net.p2p.send(peer, frame.clone()))
                .await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(PresignError::Coord(format!("announce to {peer}: {e}"))),
                Err(_) => return Err(PresignError::Coord(format!("announce to {peer} timed out"))),
            }
        }
        super::session::participate(node, &spec).await
    }
    .await;
    if let Err(e) = guard.release().await {
        tracing::debug!(error = %e, "releasing the presign slot failed; it expires with its lease");
    }
    // The leader's failure is as visible as the members' (`participate_logged`),
    // with the absentee its timeout names; the refill pass only logs at debug.
    match &result {
        Ok(n) => {
            tracing::info!(session = %spec.id, key = %key_id, signers = ?set, stored = n, "presign session done")
        }
        Err(e) => {
            tracing::warn!(session = %spec.id, key = %key_id, signers = ?set, error = %e, "presign session failed")
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combinations_are_ordered_subsets() {
        let ids: Vec<String> = ["a", "b", "c"].iter().map(|s| (*s).to_owned()).collect();
        let c = combinations(&ids, 2);
        assert_eq!(c.len(), 3);
        assert_eq!(c[0], vec!["a".to_owned(), "b".to_owned()]);
        assert_eq!(c[2], vec!["b".to_owned(), "c".to_owned()]);
        assert!(combinations(&ids, 4).is_empty());
        assert_eq!(combinations(&ids, 3).len(), 1);
    }
}
