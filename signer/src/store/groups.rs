//! Writes made in groups (issue 21): items that arrive while a group is being
//! written are written together by the next one (one statement, one commit and
//! one audit-lock hold for the group). A lone item is written at once: nothing
//! waits for a group to fill.
//!
//! Each caller still gets its own answer only once its row is committed (or its
//! write failed), so what callers do next is unchanged. Two items with the same
//! slot never share a group: the second goes to the next one. A group that
//! fails as a whole is written again one item at a time by its writer, so one bad
//! item fails alone.

use std::collections::HashSet;
use std::future::Future;
use std::hash::Hash;
use std::mem;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::oneshot;

/// An item waiting for its group, with where its answer goes.
pub(crate) type Waiting<T, R> = (T, oneshot::Sender<R>);

/// The items waiting for a write, and whether a writing task is running.
#[derive(Debug)]
pub(crate) struct Groups<T, R> {
    queue: Mutex<Queue<T, R>>,
    max_group: usize,
}

#[derive(Debug)]
struct Queue<T, R> {
    waiting: Vec<Waiting<T, R>>,
    writing: bool,
}

impl<T, R> Groups<T, R> {
    /// Groups of at most `max_group` items.
    pub(crate) fn new(max_group: usize) -> Self {
        Self {
            queue: Mutex::new(Queue {
                waiting: Vec::new(),
                writing: false,
            }),
            max_group: max_group.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue<T, R>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The next group: at most `max_group` items, one per slot; the others stay
    /// queued. `None` (and nobody writing) when the queue is empty.
    fn next_group<K: Hash + Eq>(&self, slot: impl Fn(&T) -> K) -> Option<Vec<Waiting<T, R>>> {
        let mut q = self.lock();
        if q.waiting.is_empty() {
            q.writing = false;
            return None;
        }
        let mut slots = HashSet::new();
        let mut group = Vec::new();
        let mut rest = Vec::new();
        for item in mem::take(&mut q.waiting) {
            if group.len() < self.max_group && slots.insert(slot(&item.0)) {
                group.push(item);
            } else {
                rest.push(item);
            }
        }
        q.waiting = rest;
        Some(group)
    }
}

/// Ends the writing task's turn if it stops early (a panic, or the runtime
/// dropping it): the flag is cleared and the queued answers dropped, so their
/// callers write their items themselves and the next item starts a new task.
struct WritingTask<'a, T, R>(&'a Groups<T, R>);

impl<T, R> Drop for WritingTask<'_, T, R> {
    fn drop(&mut self) {
        let mut q = self.0.lock();
        q.writing = false;
        q.waiting.clear();
    }
}

impl<T: Send + 'static, R: Send + 'static> Groups<T, R> {
    /// Queues `item` and waits for its answer. The first caller starts a writing
    /// task that hands groups to `write` until the queue is empty; `write` must
    /// answer every item of its group. `None` when the task ended without
    /// answering (the runtime shutting down): the caller then writes the item
    /// itself.
    pub(crate) async fn submit<K, S, W, F>(
        groups: &Arc<Self>,
        item: T,
        slot: S,
        write: W,
    ) -> Option<R>
    where
        K: Hash + Eq,
        S: Fn(&T) -> K + Send + 'static,
        W: Fn(Vec<Waiting<T, R>>) -> F + Send + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let (answer, answered) = oneshot::channel();
        let start = {
            let mut q = groups.lock();
            q.waiting.push((item, answer));
            !mem::replace(&mut q.writing, true)
        };
        if start {
            let groups = groups.clone();
            tokio::spawn(async move {
                let task = WritingTask(&groups);
                while let Some(group) = groups.next_group(&slot) {
                    write(group).await;
                }
                // `next_group` ended the task's turn (queue empty, flag cleared).
                mem::forget(task);
            });
        }
        answered.await.ok()
    }
}

impl<T: Clone + Send + 'static, R: Send + 'static> Groups<T, R> {
    /// [`Groups::submit`], keeping a copy of `item` that `alone` writes here when
    /// the writing task ended without answering (the runtime shutting down).
    pub(crate) async fn submit_or_alone<K, S, W, F, A, AF>(
        groups: &Arc<Self>,
        item: T,
        slot: S,
        write: W,
        alone: A,
    ) -> R
    where
        K: Hash + Eq,
        S: Fn(&T) -> K + Send + 'static,
        W: Fn(Vec<Waiting<T, R>>) -> F + Send + 'static,
        F: Future<Output = ()> + Send + 'static,
        A: FnOnce(T) -> AF,
        AF: Future<Output = R>,
    {
        match Self::submit(groups, item.clone(), slot, write).await {
            Some(r) => r,
            None => alone(item).await,
        }
    }
}

/// Answers a group: written as one by `together` when it has more than one item
/// (`Ok(Some(answers))`: every item written, answered in the group's order);
/// otherwise, or when `together` wrote nothing (`Ok(None)` or an error, its
/// transaction rolled back), each item is written by `alone`, concurrently (with
/// the database down, every caller gets its own error after one wait, not one
/// wait after another), and answered with its own result.
pub(crate) async fn write_together_or_alone<T, R, TF, TFut, AF, AFut>(
    group: Vec<Waiting<T, R>>,
    together: TF,
    alone: AF,
) where
    T: Clone,
    TF: FnOnce(Vec<T>) -> TFut,
    TFut: Future<Output = Result<Option<Vec<R>>, super::StoreError>>,
    AF: Fn(T) -> AFut,
    AFut: Future<Output = R>,
{
    if group.len() > 1 {
        match together(group.iter().map(|(item, _)| item.clone()).collect()).await {
            Ok(Some(answers)) if answers.len() == group.len() => {
                for ((_, answer), a) in group.into_iter().zip(answers) {
                    let _ = answer.send(a);
                }
                return;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(error = %e, items = group.len(), "group write failed; writing its items one by one");
            }
        }
    }
    futures::future::join_all(group.into_iter().map(|(item, answer)| {
        let write = alone(item);
        async move {
            let _ = answer.send(write.await);
        }
    }))
    .await;
}

/// `n` answers `written()`, when `all` were written (see [`write_together_or_alone`]).
pub(crate) fn all_written<R>(all: bool, n: usize, written: impl Fn() -> R) -> Option<Vec<R>> {
    all.then(|| (0..n).map(|_| written()).collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Items queued while a group is written go together into the next group, at
    /// most `max_group` of them and one per slot; every caller gets its own answer.
    #[tokio::test]
    async fn items_queued_during_a_write_share_the_next_group_one_per_slot() {
        let groups: Arc<Groups<(u32, u32), u32>> = Arc::new(Groups::new(3));
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let (release, gate) = tokio::sync::watch::channel(false);
        let mut callers = Vec::new();
        for item in [(0, 0), (1, 1), (2, 2), (3, 2), (4, 4), (5, 5)] {
            let groups = groups.clone();
            let sizes = sizes.clone();
            let gate = gate.clone();
            callers.push(tokio::spawn(async move {
                Groups::submit(
                    &groups,
                    item,
                    |i: &(u32, u32)| i.1,
                    move |group: Vec<Waiting<(u32, u32), u32>>| {
                        let sizes = sizes.clone();
                        let mut gate = gate.clone();
                        async move {
                            let _ = gate.wait_for(|open| *open).await;
                            let mut ids: Vec<u32> = group.iter().map(|(i, _)| i.0).collect();
                            ids.sort_unstable();
                            sizes.lock().unwrap().push(ids);
                            for ((id, _), answer) in group {
                                let _ = answer.send(id * 10);
                            }
                        }
                    },
                )
                .await
            }));
            tokio::task::yield_now().await;
        }
        release.send(true).unwrap();
        for (i, c) in callers.into_iter().enumerate() {
            let want = [0, 10, 20, 30, 40, 50][i];
            assert_eq!(c.await.unwrap(), Some(want));
        }
        let sizes = sizes.lock().unwrap().clone();
        assert!(sizes.iter().all(|g| g.len() <= 3), "{sizes:?}");
        assert!(
            !sizes.iter().any(|g| g.contains(&2) && g.contains(&3)),
            "two items of one slot shared a group: {sizes:?}"
        );
        let mut all: Vec<u32> = sizes.concat();
        all.sort_unstable();
        assert_eq!(all, vec![0, 1, 2, 3, 4, 5]);
    }
}
