//! Leader election on etcd's election API: the candidate whose key was created
//! first leads; when its lease expires the next candidate takes over.

use std::pin::Pin;

use etcd_client::{GetOptions, SortOrder, SortTarget};
use tracing::{info, warn};

use super::error::CoordError;
use super::lease::HeldLease;
use super::watch::RawWatch;
use super::{check_size, key_str, keys, Coord, Fence};

/// The current leader of an election: its value and fencing token.
pub type LeaderInfo = (String, i64);

impl Coord {
    /// Campaigns in `election` with `value` (e.g. this node's id), waiting until
    /// this candidate leads. The candidacy lives on a lease of `lease_ttl_secs`
    /// kept alive in the background; if this process dies the next candidate
    /// becomes leader once the lease expires. Dropping the future withdraws the
    /// candidacy.
    pub async fn campaign(&self, election: &str, value: &str) -> Result<Leadership, CoordError> {
        keys::validate_name("election name", election)?;
        let name = self.keys().election(election);
        check_size(&name, value.len())?;
        let lease = HeldLease::grant(
            self,
            self.config().lease_ttl_secs,
            format!("election {election}"),
        )
        .await?;
        // The campaign call waits until this candidate leads. When its connection
        // fails (the member it went to died), it is made again under the same lease:
        // etcd keys a candidate by its lease, so the candidate keeps its place.
        let resp = loop {
            let mut c = self.client();
            let r = tokio::select! {
                r = c.campaign(name.clone(), value, lease.id()) => r,
                () = lease.lost() => return Err(lease.lost_error()),
            };
            match r {
                Ok(resp) => break resp,
                Err(e) if super::is_transport_failure(&e) => {
                    warn!(election, error = %e, "campaign connection failed; campaigning again");
                    tokio::time::sleep(super::RETRY_PAUSE).await;
                }
                Err(e) => return Err(CoordError::etcd("campaign", e)),
            }
        };
        let leader = resp.leader().ok_or_else(|| CoordError::Malformed {
            key: self.keys().election(election),
            reason: "campaign answer without leader key".to_owned(),
        })?;
        let fence = Fence {
            key: key_str(leader.key())?.to_owned(),
            token: leader.rev(),
        };
        info!(election, token = fence.token, "became leader");
        Ok(Leadership {
            election: election.to_owned(),
            value: value.to_owned(),
            fence,
            lease,
        })
    }

    /// The current leader of `election` (its value and fencing token), if any.
    pub async fn leader(&self, election: &str) -> Result<Option<LeaderInfo>, CoordError> {
        keys::validate_name("election name", election)?;
        Ok(self.leader_at(election).await?.0)
    }

    async fn leader_at(&self, election: &str) -> Result<(Option<LeaderInfo>, i64), CoordError> {
        let dir = format!("{}/", self.keys().election(election));
        let mut c = self.client();
        let resp = self
            .rpc(
                "read leader",
                c.get(
                    dir,
                    Some(
                        GetOptions::new()
                            .with_prefix()
                            .with_sort(SortTarget::Create, SortOrder::Ascend)
                            .with_limit(1),
                    ),
                ),
            )
            .await?;
        let rev = resp.header().map_or(0, |h| h.revision());
        let Some(kv) = resp.kvs().first() else {
            return Ok((None, rev));
        };
        let key = key_str(kv.key())?;
        check_size(key, kv.value().len())?;
        let value = std::str::from_utf8(kv.value()).map_err(|_| CoordError::Malformed {
            key: key.to_owned(),
            reason: "leader value is not utf-8".to_owned(),
        })?;
        Ok((Some((value.to_owned(), kv.create_revision())), rev))
    }

    /// Watches the leader of `election`: first the current leader (or `None`),
    /// then every change of leader.
    pub async fn observe(&self, election: &str) -> Result<LeaderWatch, CoordError> {
        keys::validate_name("election name", election)?;
        let (current, rev) = self.leader_at(election).await?;
        let raw = self.watch_raw(format!("{}/", self.keys().election(election)), rev + 1);
        Ok(LeaderWatch {
            coord: self.clone(),
            election: election.to_owned(),
            raw,
            last: None,
            first: Some(current),
        })
    }
}

/// Leadership of an election; see [`Coord::campaign`]. Dropping it resigns in
/// the background; [`Leadership::resign`] resigns and waits for etcd.
///
/// Loss is detected through the lease only ([`Leadership::is_leader`]); if
/// someone deletes the leader key by hand, [`Coord::fence_is_current`] and
/// fenced writes notice, `is_leader` does not.
#[derive(Debug)]
#[must_use = "leadership is given up when this is dropped"]
pub struct Leadership {
    election: String,
    value: String,
    fence: Fence,
    lease: HeldLease,
}

impl Leadership {
    /// The election's name.
    pub fn election(&self) -> &str {
        &self.election
    }

    /// The value this leader campaigned with.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// The fencing token: the revision at which this leader's key was created.
    /// Strictly increasing across successive leaders.
    pub fn fencing_token(&self) -> i64 {
        self.fence.token
    }

    /// The fence to pass to [`Coord::put_fenced`].
    pub fn fence(&self) -> &Fence {
        &self.fence
    }

    /// False once the leadership's lease is known to be lost; another candidate
    /// may lead already. Fenced writes are refused either way.
    pub fn is_leader(&self) -> bool {
        self.lease.is_alive()
    }

    /// Resolves when leadership is known to be lost.
    pub async fn lost(&self) {
        self.lease.lost().await;
    }

    /// Gives up leadership (revokes the lease); the next candidate takes over.
    pub async fn resign(self) -> Result<(), CoordError> {
        let election = self.election;
        self.lease.revoke().await?;
        info!(election = %election, "resigned leadership");
        Ok(())
    }
}

/// Leader changes of one election; see [`Coord::observe`]. Reconnects by itself.
#[derive(Debug)]
pub struct LeaderWatch {
    coord: Coord,
    election: String,
    raw: RawWatch,
    last: Option<Option<LeaderInfo>>,
    first: Option<Option<LeaderInfo>>,
}

impl LeaderWatch {
    /// The next leader (`None` = no leader), or `None` once the watch ended.
    pub async fn next(&mut self) -> Option<Result<Option<LeaderInfo>, CoordError>> {
        if let Some(first) = self.first.take() {
            self.last = Some(first.clone());
            return Some(Ok(first));
        }
        loop {
            if let Err(e) = self.raw.recv().await? {
                return Some(Err(e));
            }
            let current = match self.coord.leader(&self.election).await {
                Ok(c) => c,
                Err(e) => {
                    warn!(election = %self.election, error = %e, "reading leader failed");
                    return Some(Err(e));
                }
            };
            if self.last.as_ref() != Some(&current) {
                self.last = Some(current.clone());
                return Some(Ok(current));
            }
        }
    }

    /// This watch as a [`futures::Stream`].
    pub fn into_stream(
        self,
    ) -> Pin<Box<dyn futures::Stream<Item = Result<Option<LeaderInfo>, CoordError>> + Send>> {
        Box::pin(futures::stream::unfold(self, |mut w| async move {
            w.next().await.map(|item| (item, w))
        }))
    }
}
