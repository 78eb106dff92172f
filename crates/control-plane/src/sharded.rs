//! A hash map in shards, for maps that grow with every ticket or match.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};

/// Shards of each map.
const SHARDS: usize = 64;

/// A hash map split into [`SHARDS`] maps by the key's hash, so that growing
/// it rehashes one shard's entries at a time. One map of every ticket made the
/// request that crossed a power of two wait for all of them to move — under
/// the store's lock, so every request then waited: stalls of ≈ 20, 70 and
/// 130 ms at 14,336, 28,672 and 57,344 tickets, each a whole run's p99. The
/// same held for a server's allocations awaiting their land, in the matching
/// loop itself.
pub(crate) struct ShardedMap<K, V> {
    shards: [HashMap<K, V>; SHARDS],
    hasher: RandomState,
}

impl<K, V> Default for ShardedMap<K, V> {
    fn default() -> Self {
        Self {
            shards: std::array::from_fn(|_| HashMap::new()),
            hasher: RandomState::new(),
        }
    }
}

impl<K: std::fmt::Debug, V: std::fmt::Debug> std::fmt::Debug for ShardedMap<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.shards.iter().flat_map(HashMap::iter))
            .finish()
    }
}

impl<K: Hash + Eq, V> ShardedMap<K, V> {
    fn shard_of<Q: Hash + ?Sized>(&self, key: &Q) -> usize {
        // Below SHARDS, so the cast cannot truncate and indexing cannot fail.
        (self.hasher.hash_one(key) % SHARDS as u64) as usize
    }

    pub(crate) fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shards[self.shard_of(key)].get(key)
    }

    pub(crate) fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let shard = self.shard_of(key);
        self.shards[shard].get_mut(key)
    }

    pub(crate) fn insert(&mut self, key: K, value: V) -> Option<V> {
        let shard = self.shard_of(&key);
        self.shards[shard].insert(key, value)
    }

    pub(crate) fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let shard = self.shard_of(key);
        self.shards[shard].remove(key)
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &V> {
        self.shards.iter().flat_map(HashMap::values)
    }

    pub(crate) fn keys(&self) -> impl Iterator<Item = &K> {
        self.shards.iter().flat_map(HashMap::keys)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.shards.iter().all(HashMap::is_empty)
    }

    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(HashMap::len).sum()
    }

    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&K, &mut V) -> bool) {
        for shard in &mut self.shards {
            shard.retain(&mut keep);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_sharded_map_finds_updates_and_removes_every_key_it_holds() {
        let mut map: ShardedMap<String, usize> = ShardedMap::default();
        for i in 0..10_000 {
            assert_eq!(map.insert(format!("ticket-{i}"), i), None);
        }
        // Keys spread over the shards (none is left empty by 10,000 keys).
        assert!(map.shards.iter().all(|shard| !shard.is_empty()));
        assert_eq!(map.len(), 10_000);
        assert_eq!(map.values().count(), 10_000);
        assert_eq!(map.keys().count(), 10_000);
        map.retain(|_, value| *value % 2 == 0);
        assert_eq!(map.len(), 5_000);
        assert_eq!(map.get("ticket-3"), None);
        assert_eq!(map.insert("ticket-6".to_owned(), 60), Some(6));
        *map.get_mut("ticket-8").unwrap() += 1;
        assert_eq!(map.get("ticket-6"), Some(&60));
        assert_eq!(map.get("ticket-8"), Some(&9));
        assert_eq!(map.get("ticket-10000"), None);
        for i in (0..10_000).step_by(2) {
            assert!(map.remove(format!("ticket-{i}").as_str()).is_some());
        }
        assert!(map.is_empty());
        assert_eq!(map.len(), 0);
    }
}
