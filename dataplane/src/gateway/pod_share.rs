//! A bounded queue from the workers to one consumer thread (the IPFIX
//! exporter, the log writer) in which each pod holds at most a share: a
//! pod that makes records faster than the consumer takes them loses its
//! own, not every tenant's. Pods are hashed (with a key of this
//! process's, so no pod can pick another's slot) into slots, and a slot's
//! records in the queue are bounded.

use crossbeam_queue::ArrayQueue;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, Ordering};

/// Pods are hashed into this many slots of the queue.
const SHARE_SLOTS: usize = 64;
/// One slot's records may fill at most this share of the queue.
pub const POD_SHARE_DIVISOR: usize = 16;

/// A record that names the pod it is about.
pub trait OfPod {
    fn pod(&self) -> Ipv4Addr;
}

/// Why a record did not go in the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The queue is full.
    Full,
    /// The pod's slot holds its share already.
    PodShare,
}

pub struct PodShareQueue<T> {
    records: ArrayQueue<T>,
    by_slot: [AtomicU32; SHARE_SLOTS],
    keys: RandomState,
}

impl<T: OfPod> PodShareQueue<T> {
    pub fn new(capacity: usize) -> PodShareQueue<T> {
        PodShareQueue {
            records: ArrayQueue::new(capacity),
            by_slot: std::array::from_fn(|_| Default::default()),
            keys: Default::default(),
        }
    }

    fn slot(&self, pod: Ipv4Addr) -> &AtomicU32 {
        &self.by_slot[self.keys.hash_one(pod) as usize % SHARE_SLOTS]
    }

    /// Queues a record, within its pod's share.
    pub fn push(&self, r: T) -> Result<(), Refused> {
        let slot = self.slot(r.pod());
        // Workers race between the load and the add: a slot may pass its
        // share by a record per worker, no more.
        if slot.load(Ordering::Relaxed) as usize >= self.records.capacity() / POD_SHARE_DIVISOR {
            return Err(Refused::PodShare);
        }
        slot.fetch_add(1, Ordering::Relaxed);
        self.records.push(r).map_err(|_| {
            slot.fetch_sub(1, Ordering::Relaxed);
            Refused::Full
        })
    }

    pub fn pop(&self) -> Option<T> {
        let r = self.records.pop()?;
        self.slot(r.pod()).fetch_sub(1, Ordering::Relaxed);
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Record(Ipv4Addr);

    impl OfPod for Record {
        fn pod(&self) -> Ipv4Addr {
            self.0
        }
    }

    const POD: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

    /// One pod making records faster than the consumer takes them fills
    /// only its share of the queue; another pod's records still go in.
    #[test]
    fn one_pod_fills_at_most_its_share_of_the_queue() {
        let q = PodShareQueue::new(1024);
        let taken = (0..1024).filter(|_| q.push(Record(POD)).is_ok()).count();
        assert_eq!(taken, 1024 / POD_SHARE_DIVISOR);
        assert_eq!(q.push(Record(POD)), Err(Refused::PodShare));
        // Another pod in another slot.
        let other =
            (1..=255u8).map(|b| Ipv4Addr::new(198, 18, 1, b)).find(|&p| !std::ptr::eq(q.slot(p), q.slot(POD))).unwrap();
        assert_eq!(q.push(Record(other)), Ok(()));
        // What the consumer takes frees the pod's share again.
        assert!(q.pop().is_some());
        assert_eq!(q.push(Record(POD)), Ok(()));
    }

    #[test]
    fn a_full_queue_refuses_whatever_the_shares() {
        let q = PodShareQueue::new(32);
        let pods = (0..=255u8).map(|b| Ipv4Addr::new(198, 18, 2, b));
        let taken = pods.clone().filter(|&p| q.push(Record(p)).is_ok()).count();
        assert_eq!(taken, 32);
        let refused = pods.map(|p| q.push(Record(p))).find(|r| *r == Err(Refused::Full));
        assert_eq!(refused, Some(Err(Refused::Full)));
    }
}
