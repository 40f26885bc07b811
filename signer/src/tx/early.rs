//! Messages that overtake their transaction's proposal (a vote or a signing result
//! can reach a node before the proposal does), kept until the proposal arrives.
//!
//! The buffer is bounded three ways, so a peer cannot grow it or push out what the
//! other peers sent: a total capacity (the oldest entry goes), a quota per sender
//! (that sender's oldest entry goes) and an age (entries older than
//! [`EARLY_MAX_AGE`] are dropped: their proposal is not coming).

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use uuid::Uuid;

/// How long a message waits for its proposal at most.
pub const EARLY_MAX_AGE: Duration = Duration::from_secs(600);

/// A bounded buffer of messages keyed by transaction id.
#[derive(Debug)]
pub struct EarlyBuffer<T> {
    capacity: usize,
    per_sender: usize,
    entries: Mutex<VecDeque<Early<T>>>,
}

#[derive(Debug)]
struct Early<T> {
    tx: Uuid,
    from: String,
    at: Instant,
    msg: T,
}

impl<T> EarlyBuffer<T> {
    /// A buffer of at most `capacity` messages, at most a quarter of them from one
    /// sender.
    pub fn new(capacity: usize) -> Self {
        EarlyBuffer {
            capacity: capacity.max(1),
            per_sender: (capacity / 4).max(1),
            entries: Mutex::new(VecDeque::new()),
        }
    }

    /// Keeps `msg` of transaction `tx` from `from`; returns whether an older entry
    /// had to be dropped to make room.
    pub fn keep(&self, tx: Uuid, from: String, msg: T) -> bool {
        let now = Instant::now();
        let mut g = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        while g
            .front()
            .is_some_and(|e| now.duration_since(e.at) > EARLY_MAX_AGE)
        {
            g.pop_front();
        }
        let mut dropped = false;
        if g.iter().filter(|e| e.from == from).count() >= self.per_sender {
            if let Some(pos) = g.iter().position(|e| e.from == from) {
                g.remove(pos);
                dropped = true;
            }
        }
        if g.len() >= self.capacity {
            g.pop_front();
            dropped = true;
        }
        g.push_back(Early {
            tx,
            from,
            at: now,
            msg,
        });
        dropped
    }

    /// Takes every kept message of `tx`, oldest first, with its sender.
    pub fn take(&self, tx: Uuid) -> Vec<(String, T)> {
        let mut g = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let mut mine = Vec::new();
        let mut rest = VecDeque::with_capacity(g.len());
        for e in g.drain(..) {
            if e.tx == tx {
                mine.push((e.from, e.msg));
            } else {
                rest.push_back(e);
            }
        }
        *g = rest;
        mine
    }

    /// Messages kept.
    pub fn len(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_messages_are_taken_once_per_transaction() {
        let b = EarlyBuffer::new(16);
        let (t1, t2) = (Uuid::new_v4(), Uuid::new_v4());
        b.keep(t1, "node-1".into(), 1);
        b.keep(t2, "node-2".into(), 2);
        b.keep(t1, "node-3".into(), 3);
        assert_eq!(
            b.take(t1),
            vec![("node-1".to_owned(), 1), ("node-3".to_owned(), 3)]
        );
        assert!(b.take(t1).is_empty());
        assert_eq!(b.take(t2), vec![("node-2".to_owned(), 2)]);
        assert!(b.is_empty());
    }

    #[test]
    fn one_sender_cannot_push_out_the_others() {
        let b = EarlyBuffer::new(8);
        let genuine = Uuid::new_v4();
        b.keep(genuine, "node-2".into(), 0);
        for i in 0..100 {
            b.keep(Uuid::new_v4(), "node-5".into(), i);
        }
        assert_eq!(
            b.len(),
            3,
            "node-5 holds its quota of 2, node-2 its one entry"
        );
        assert_eq!(b.take(genuine), vec![("node-2".to_owned(), 0)]);
    }

    #[test]
    fn a_full_buffer_drops_its_oldest_entry() {
        let b = EarlyBuffer::new(4);
        let first = Uuid::new_v4();
        assert!(!b.keep(first, "node-1".into(), 0));
        for (i, from) in ["node-2", "node-3", "node-4"].into_iter().enumerate() {
            assert!(!b.keep(Uuid::new_v4(), from.into(), i + 1));
        }
        assert!(b.keep(Uuid::new_v4(), "node-5".into(), 9));
        assert_eq!(b.len(), 4);
        assert!(b.take(first).is_empty(), "the oldest entry went");
    }
}
