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
    lru: LruCache<u64, Arc<V>>,
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
        self.shard(key).lock().lru.get(&key).cloned()
    }

    pub fn put(&self, key: u64, value: Arc<V>) {
        self.put_unless(key, value, |_| false)
    }

    /// Insert unless the value already there should stay (`keep_old` says so).
    pub fn put_unless(&self, key: u64, value: Arc<V>, keep_old: impl Fn(&V) -> bool) {
        let mut s = self.shard(key).lock();
        if s.lru.peek(&key).is_some_and(|old| keep_old(old)) {
            return;
        }
        let w = value.weight();
        if let Some(old) = s.lru.put(key, value) {
            s.weight -= old.weight();
        }
        s.weight += w;
        while s.weight > self.budget_per_shard && s.lru.len() > 1 {
            match s.lru.pop_lru() {
                Some((_, old)) => s.weight -= old.weight(),
                None => break,
            }
        }
    }

    /// Remove the value under `key` if `pred` says so.
    pub fn remove_if(&self, key: u64, pred: impl Fn(&Arc<V>) -> bool) {
        let mut s = self.shard(key).lock();
        if s.lru.peek(&key).is_some_and(&pred)
            && let Some(old) = s.lru.pop(&key)
        {
            s.weight -= old.weight();
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
}
