//! Requests waiting for their revision: one FIFO per revision, bounded.
//!
//! A request waits here while its revision has no ready endpoints (Knative's
//! activator buffering a scaled-to-zero revision) or while the revision's
//! in-flight requests are at its capacity (the activator's breaker queue).
//! Both share one queue per revision so release order is arrival order.
//! Holding is per VM: each Envoy worker keeps its own queues.

use std::collections::{HashMap, VecDeque};

use crate::revision::RevisionKey;

/// A request waiting in a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// The HTTP context id of the paused request.
    pub id: u32,
    /// When it started waiting (ns since the Unix epoch, host clock).
    pub since_ns: u64,
}

/// The queue of a revision is full; the request must be refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull {
    pub held: usize,
    pub limit: usize,
}

/// Per-revision FIFOs of held requests, each at most `limit` long.
#[derive(Debug)]
pub struct HoldQueue {
    queues: HashMap<RevisionKey, VecDeque<Held>>,
    limit: usize,
}

impl HoldQueue {
    pub fn new(limit: usize) -> Self {
        Self { queues: HashMap::new(), limit }
    }

    /// Changes the bound; requests already held beyond it stay held.
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit;
    }

    /// Queues a request at the back; returns how many are held for the
    /// revision afterwards.
    pub fn push(&mut self, key: &RevisionKey, held: Held) -> Result<usize, QueueFull> {
        let queue = match self.queues.get_mut(key) {
            Some(queue) => queue,
            None => self.queues.entry(key.clone()).or_default(),
        };
        if queue.len() >= self.limit {
            return Err(QueueFull { held: queue.len(), limit: self.limit });
        }
        queue.push_back(held);
        Ok(queue.len())
    }

    /// The oldest request held for the revision.
    pub fn front(&self, key: &RevisionKey) -> Option<Held> {
        self.queues.get(key).and_then(|q| q.front().copied())
    }

    /// Takes the oldest request held for the revision.
    pub fn pop_front(&mut self, key: &RevisionKey) -> Option<Held> {
        let queue = self.queues.get_mut(key)?;
        let held = queue.pop_front();
        if queue.is_empty() {
            self.queues.remove(key);
        }
        held
    }

    /// Removes a request wherever it is in its revision's queue (client abort).
    /// Linear in the queue's length, which is bounded by the limit.
    pub fn remove(&mut self, key: &RevisionKey, id: u32) -> bool {
        let Some(queue) = self.queues.get_mut(key) else { return false };
        let removed = queue.iter().position(|h| h.id == id).and_then(|at| queue.remove(at)).is_some();
        if queue.is_empty() {
            self.queues.remove(key);
        }
        removed
    }

    /// Takes, oldest first, the requests held since `timeout_ns` or longer.
    /// Arrival order makes them a prefix of the queue.
    pub fn expire(&mut self, key: &RevisionKey, now_ns: u64, timeout_ns: u64) -> Vec<Held> {
        let mut expired = Vec::new();
        while let Some(front) = self.front(key) {
            if now_ns.saturating_sub(front.since_ns) < timeout_ns {
                break;
            }
            if let Some(held) = self.pop_front(key) {
                expired.push(held);
            }
        }
        expired
    }

    /// Takes every request held for the revision, oldest first.
    pub fn drain(&mut self, key: &RevisionKey) -> Vec<Held> {
        self.queues.remove(key).map(Vec::from).unwrap_or_default()
    }

    /// Requests held for the revision.
    pub fn len(&self, key: &RevisionKey) -> usize {
        self.queues.get(key).map_or(0, VecDeque::len)
    }

    /// Requests held for all revisions.
    pub fn total(&self) -> usize {
        self.queues.values().map(VecDeque::len).sum()
    }

    /// Revisions with at least one held request, sorted.
    pub fn revisions(&self) -> Vec<RevisionKey> {
        let mut keys: Vec<RevisionKey> = self.queues.keys().cloned().collect();
        keys.sort();
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(id: u32, since_ns: u64) -> Held {
        Held { id, since_ns }
    }

    #[test]
    fn fifo_per_revision_with_a_bound() {
        let (a, b) = (RevisionKey::new("d", "a"), RevisionKey::new("d", "b"));
        let mut q = HoldQueue::new(2);
        assert_eq!(q.push(&a, held(1, 0)), Ok(1));
        assert_eq!(q.push(&a, held(2, 1)), Ok(2));
        assert_eq!(q.push(&a, held(3, 2)), Err(QueueFull { held: 2, limit: 2 }));
        assert_eq!(q.push(&b, held(4, 2)), Ok(1), "each revision has its own bound");
        assert_eq!(q.total(), 3);
        assert_eq!(q.revisions(), vec![a.clone(), b.clone()]);
        assert_eq!(q.pop_front(&a), Some(held(1, 0)));
        assert_eq!(q.pop_front(&a), Some(held(2, 1)));
        assert_eq!(q.pop_front(&a), None);
        assert_eq!(q.revisions(), vec![b], "empty queues are dropped");
    }

    #[test]
    fn abort_removes_from_the_middle() {
        let a = RevisionKey::new("d", "a");
        let mut q = HoldQueue::new(10);
        for id in 1..=3 {
            q.push(&a, held(id, 0)).unwrap();
        }
        assert!(q.remove(&a, 2));
        assert!(!q.remove(&a, 2), "second removal is a no-op");
        assert!(!q.remove(&RevisionKey::new("d", "x"), 1));
        assert_eq!(q.drain(&a), vec![held(1, 0), held(3, 0)]);
        assert_eq!(q.len(&a), 0);
    }

    #[test]
    fn expiry_takes_the_oldest_prefix() {
        let a = RevisionKey::new("d", "a");
        let mut q = HoldQueue::new(10);
        for (id, since) in [(1, 100), (2, 200), (3, 300)] {
            q.push(&a, held(id, since)).unwrap();
        }
        assert_eq!(q.expire(&a, 250, 100), vec![held(1, 100)]);
        assert_eq!(q.expire(&a, 250, 100), vec![]);
        assert_eq!(q.expire(&a, 1_000, 100), vec![held(2, 200), held(3, 300)]);
        assert_eq!(q.total(), 0);
        // A clock that went backwards expires nothing.
        q.push(&a, held(4, 500)).unwrap();
        assert_eq!(q.expire(&a, 10, 100), vec![]);
    }
}
