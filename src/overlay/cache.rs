//! A sharded LRU cache bounded by the total weight of its values (e.g. entries held),
//! so memory stays flat however many directories a walk touches.

use std::sync::Arc;

use lru::LruCache;
use parking_lot::Mutex;

/// How much a cached value counts against the budget.
pub trait Weighted {
    fn weight(&self) -> usize;
}

struct Shard<V> {
    /// Each value with the weight it was counted at.
    lru: LruCache<u64, (Arc<V>, usize)>,
    weight: usize,
}

pub struct ShardedLru<V> {
    shards: Vec<Mutex<Shard<V>>>,
    budget_per_shard: usize,
}

impl<V: Weighted> ShardedLru<V> {
    /// `budget`: total weight over all shards (each shard keeps at least one value).
    pub fn new(budget: usize, shards: usize) -> Self {
        ShardedLru {
            shards: (0..shards)
                .map(|_| {
                    Mutex::new(Shard {
                        lru: LruCache::unbounded(),
                        weight: 0,
                    })
                })
                .collect(),
            budget_per_shard: (budget / shards).max(256),
        }
    }

    fn shard(&self, key: u64) -> &Mutex<Shard<V>> {
        &self.shards[(key as usize) % self.shards.len()]
    }

    pub fn get(&self, key: u64) -> Option<Arc<V>> {
        self.shard(key).lock().lru.get(&key).map(|(v, _)| v.clone())
    }

    pub fn put(&self, key: u64, value: Arc<V>) {
        self.put_unless(key, value, |_| false)
    }

    /// Insert unless the value already there should stay (`keep_old` says so).
    pub fn put_unless(&self, key: u64, value: Arc<V>, keep_old: impl Fn(&V) -> bool) {
        let mut s = self.shard(key).lock();
        if s.lru.peek(&key).is_some_and(|(old, _)| keep_old(old)) {
            return;
        }
        let w = value.weight();
        if let Some((_, old)) = s.lru.put(key, (value, w)) {
            s.weight -= old;
        }
        s.weight += w;
        self.trim(&mut s);
    }

    fn trim(&self, s: &mut Shard<V>) {
        while s.weight > self.budget_per_shard && s.lru.len() > 1 {
            match s.lru.pop_lru() {
                Some((_, (_, old))) => s.weight -= old,
                None => break,
            }
        }
    }

    /// `value`, still cached under `key`, has grown or shrunk: count it at its weight
    /// now (and evict others if that is over the budget).
    pub fn reweigh(&self, key: u64, value: &Arc<V>) {
        let mut s = self.shard(key).lock();
        let w = value.weight();
        if !s.lru.peek(&key).is_some_and(|(v, _)| Arc::ptr_eq(v, value)) {
            return;
        }
        // In use: the most recently used too.
        let Some((_, counted)) = s.lru.get_mut(&key) else {
            return;
        };
        let old = std::mem::replace(counted, w);
        s.weight = s.weight - old + w;
        self.trim(&mut s);
    }

    /// Remove the value under `key` if `pred` says so.
    pub fn remove_if(&self, key: u64, pred: impl Fn(&Arc<V>) -> bool) {
        let mut s = self.shard(key).lock();
        if s.lru.peek(&key).is_some_and(|(v, _)| pred(v))
            && let Some((_, old)) = s.lru.pop(&key)
        {
            s.weight -= old;
        }
    }

    /// Total weight currently held.
    pub fn weight(&self) -> usize {
        self.shards.iter().map(|s| s.lock().weight).sum()
    }
}

impl<T> Weighted for Vec<T> {
    fn weight(&self) -> usize {
        self.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_by_weight() {
        let c: ShardedLru<Vec<u8>> = ShardedLru::new(256, 1);
        c.put(1, Arc::new(vec![0; 200]));
        c.put(2, Arc::new(vec![0; 100]));
        assert!(c.get(1).is_none(), "oldest value evicted once over budget");
        assert!(c.get(2).is_some());
        assert_eq!(c.weight(), 100);
        c.put(2, Arc::new(vec![0; 10]));
        assert_eq!(c.weight(), 10, "replacing a value replaces its weight");
        c.remove_if(2, |v| v.len() == 99);
        assert!(c.get(2).is_some(), "kept when the predicate says no");
        c.remove_if(2, |v| v.len() == 10);
        assert!(c.get(2).is_none());
        assert_eq!(c.weight(), 0);
    }

    /// A value whose weight changes while cached (a listing read as it is served).
    struct Grows(std::sync::atomic::AtomicUsize);

    impl Weighted for Grows {
        fn weight(&self) -> usize {
            self.0.load(std::sync::atomic::Ordering::Relaxed)
        }
    }

    #[test]
    fn a_value_that_grows_is_counted_at_its_new_weight() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let c: ShardedLru<Grows> = ShardedLru::new(256, 1);
        let a = Arc::new(Grows(AtomicUsize::new(10)));
        let b = Arc::new(Grows(AtomicUsize::new(10)));
        c.put(1, a.clone());
        c.put(2, b.clone());
        a.0.store(100, Ordering::Relaxed);
        // Unchanged until told: removal takes off what was counted, not what it is now.
        assert_eq!(c.weight(), 20);
        c.reweigh(1, &a);
        assert_eq!(c.weight(), 110);
        c.reweigh(2, &a);
        assert_eq!(c.weight(), 110, "another value under the key is left alone");
        a.0.store(300, Ordering::Relaxed);
        c.reweigh(1, &a);
        assert!(
            c.get(2).is_none(),
            "growing past the budget evicts the oldest"
        );
        assert_eq!(c.weight(), 300);
        c.remove_if(1, |_| true);
        assert_eq!(c.weight(), 0);
    }
}
