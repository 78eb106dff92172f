//! A hash map in shards, for maps that grow with every ticket or match.

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::LazyLock;

use hashbrown::HashTable;

/// Shards of each map.
const SHARDS: usize = 64;

/// Where each shard's range of hashes ends (the last runs to `u64::MAX`).
/// Shard `i` takes a share of the keys proportional to 2^(i/64): the shares
/// span one doubling, so the shards reach each size at which a hash map grows
/// (and moves every entry) one after another over a doubling of the map, not
/// all together. With equal shares all 64 grew within about a second of each
/// other: 20 % of the control plane's samples in rehashing, in bursts at
/// 229,376 and 458,752 tickets.
static SHARD_ENDS: LazyLock<[u64; SHARDS - 1]> = LazyLock::new(|| {
    let weight = |shard: usize| (shard as f64 / SHARDS as f64).exp2();
    let total: f64 = (0..SHARDS).map(weight).sum();
    let mut ends = [0u64; SHARDS - 1];
    let mut cumulative = 0.0;
    for (shard, end) in ends.iter_mut().enumerate() {
        cumulative += weight(shard);
        // The float-to-int cast saturates; every end lies below 2^64.
        *end = (cumulative / total * 18_446_744_073_709_551_616.0) as u64;
    }
    ends
});

/// A hash map split into [`SHARDS`] maps by the key's hash, so that growing
/// it rehashes one shard's entries at a time (and, see [`SHARD_ENDS`], one
/// shard at a time). One map of every ticket made the
/// request that crossed a power of two wait for all of them to move — under
/// the store's lock, so every request then waited: stalls of ≈ 20, 70 and
/// 130 ms at 14,336, 28,672 and 57,344 tickets, each a whole run's p99. The
/// same held for a server's allocations awaiting their land, in the matching
/// loop itself.
///
/// Each entry keeps its key's hash. The key is hashed once per call (a
/// `HashMap` per shard hashed it twice: to pick the shard, then in the
/// shard), and growing a shard moves entries by their stored hash instead of
/// reading every key again: with string keys that read was a cache miss per
/// entry, and rehashing was 4 % of the control plane's CPU at 10,000
/// assignments/s. The hasher stays std's keyed SipHash: player ids and
/// other keys come from callers, so the maps must resist chosen collisions.
pub(crate) struct ShardedMap<K, V> {
    shards: [HashTable<Entry<K, V>>; SHARDS],
    hasher: RandomState,
}

struct Entry<K, V> {
    hash: u64,
    key: K,
    value: V,
}

/// A shard's table hash from the key's: the high bits picked the shard, so
/// within one they are nearly alike, while the table takes its tag from its
/// hash's top 7 bits. Rotating hands it bits the shard choice left uniform.
fn in_shard(hash: u64) -> u64 {
    hash.rotate_left(32)
}

/// Whether an entry is the one for `key` (of hash `hash`): the stored hash is
/// compared first, so a key's bytes are read only on a likely match.
fn holds<'a, K, V, Q>(hash: u64, key: &'a Q) -> impl Fn(&Entry<K, V>) -> bool + 'a
where
    K: Borrow<Q>,
    Q: Eq + ?Sized,
{
    move |entry| entry.hash == hash && entry.key.borrow() == key
}

impl<K, V> Default for ShardedMap<K, V> {
    fn default() -> Self {
        Self {
            shards: std::array::from_fn(|_| HashTable::new()),
            hasher: RandomState::new(),
        }
    }
}

impl<K: std::fmt::Debug, V: std::fmt::Debug> std::fmt::Debug for ShardedMap<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(
                self.shards
                    .iter()
                    .flat_map(HashTable::iter)
                    .map(|entry| (&entry.key, &entry.value)),
            )
            .finish()
    }
}

impl<K: Hash + Eq, V> ShardedMap<K, V> {
    /// The key's hash and its shard.
    fn locate<Q: Hash + ?Sized>(&self, key: &Q) -> (u64, usize) {
        let hash = self.hasher.hash_one(key);
        // At most SHARDS - 1: indexing cannot fail.
        (hash, SHARD_ENDS.partition_point(|&end| end <= hash))
    }

    pub(crate) fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (hash, shard) = self.locate(key);
        self.shards[shard]
            .find(in_shard(hash), holds(hash, key))
            .map(|entry| &entry.value)
    }

    pub(crate) fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (hash, shard) = self.locate(key);
        self.shards[shard]
            .find_mut(in_shard(hash), holds(hash, key))
            .map(|entry| &mut entry.value)
    }

    pub(crate) fn insert(&mut self, key: K, value: V) -> Option<V> {
        let (hash, shard) = self.locate(&key);
        match self.shards[shard].entry(in_shard(hash), holds(hash, &key), |entry| {
            in_shard(entry.hash)
        }) {
            hashbrown::hash_table::Entry::Occupied(mut occupied) => {
                Some(std::mem::replace(&mut occupied.get_mut().value, value))
            }
            hashbrown::hash_table::Entry::Vacant(vacant) => {
                vacant.insert(Entry { hash, key, value });
                None
            }
        }
    }

    pub(crate) fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (hash, shard) = self.locate(key);
        let found = self.shards[shard].find_entry(in_shard(hash), holds(hash, key));
        found.ok().map(|occupied| occupied.remove().0.value)
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &V> {
        self.shards
            .iter()
            .flat_map(HashTable::iter)
            .map(|entry| &entry.value)
    }

    pub(crate) fn keys(&self) -> impl Iterator<Item = &K> {
        self.shards
            .iter()
            .flat_map(HashTable::iter)
            .map(|entry| &entry.key)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.shards.iter().all(HashTable::is_empty)
    }

    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(HashTable::len).sum()
    }

    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&K, &mut V) -> bool) {
        for shard in &mut self.shards {
            shard.retain(|entry| keep(&entry.key, &mut entry.value));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u16, u32),
        Get(u16),
        Bump(u16),
        Remove(u16),
        RetainEven,
    }

    fn op() -> impl Strategy<Value = Op> {
        // Few distinct keys, so inserts replace and removes hit.
        let key = 0u16..600;
        prop_oneof![
            4 => (key.clone(), any::<u32>()).prop_map(|(key, value)| Op::Insert(key, value)),
            2 => key.clone().prop_map(Op::Get),
            1 => key.clone().prop_map(Op::Bump),
            2 => key.prop_map(Op::Remove),
            1 => Just(Op::RetainEven),
        ]
    }

    proptest! {
        /// Any sequence of calls answers as std's `HashMap` does, through
        /// shard growth (hundreds of keys) and removal.
        #[test]
        fn a_sharded_map_answers_as_a_hash_map_does(ops in prop::collection::vec(op(), 1..2_000)) {
            let mut sharded: ShardedMap<String, u32> = ShardedMap::default();
            let mut model: HashMap<String, u32> = HashMap::new();
            for op in ops {
                match op {
                    Op::Insert(key, value) => prop_assert_eq!(
                        sharded.insert(format!("ticket-{key}"), value),
                        model.insert(format!("ticket-{key}"), value)
                    ),
                    Op::Get(key) => {
                        let key = format!("ticket-{key}");
                        prop_assert_eq!(sharded.get(key.as_str()), model.get(&key));
                    }
                    Op::Bump(key) => {
                        let key = format!("ticket-{key}");
                        if let Some(value) = sharded.get_mut(key.as_str()) {
                            *value = value.wrapping_add(1);
                        }
                        if let Some(value) = model.get_mut(&key) {
                            *value = value.wrapping_add(1);
                        }
                    }
                    Op::Remove(key) => {
                        let key = format!("ticket-{key}");
                        prop_assert_eq!(sharded.remove(key.as_str()), model.remove(&key));
                    }
                    Op::RetainEven => {
                        sharded.retain(|_, value| *value % 2 == 0);
                        model.retain(|_, value| *value % 2 == 0);
                    }
                }
                prop_assert_eq!(sharded.len(), model.len());
            }
            let mut held: Vec<(String, u32)> = sharded
                .keys()
                .cloned()
                .zip(sharded.values().copied())
                .collect();
            let mut expected: Vec<(String, u32)> = model.into_iter().collect();
            held.sort();
            expected.sort();
            prop_assert_eq!(held, expected);
        }
    }

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

    #[test]
    fn shards_hold_shares_spread_over_one_doubling() {
        let mut map: ShardedMap<u64, ()> = ShardedMap::default();
        for key in 0..200_000u64 {
            map.insert(key, ());
        }
        let sizes: Vec<usize> = map.shards.iter().map(HashTable::len).collect();
        // Expected ≈ 2,170 in the first shard and ≈ 4,300 in the last.
        let (first, last) = (sizes[0] as f64, sizes[SHARDS - 1] as f64);
        assert!((1.7..2.3).contains(&(last / first)), "{sizes:?}");
        // Rising with the shard's index, give or take the keys' scatter.
        let lower_half: usize = sizes[..SHARDS / 2].iter().sum();
        let upper_half: usize = sizes[SHARDS / 2..].iter().sum();
        assert!(upper_half as f64 / lower_half as f64 > 1.3, "{sizes:?}");
        assert_eq!(SHARD_ENDS.len(), SHARDS - 1);
        assert!(SHARD_ENDS.windows(2).all(|pair| pair[0] < pair[1]));
    }
}
