//! Where shards live: rendezvous (highest random weight) hashing of shards over the
//! cluster's live members. Every node computes the same map from the same member list,
//! and a member joining or leaving moves only the shards whose top replicas change.

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// The weight of `node` for `shard`: the same on every platform.
pub fn weight(shard: u32, node: &str) -> u64 {
    xxh3_64_with_seed(node.as_bytes(), u64::from(shard) ^ 0x9e37_79b9_7f4a_7c15)
}

/// `nodes` ordered by their weight for `shard`, heaviest first (ties by name).
pub fn ranked<'a>(shard: u32, nodes: &[&'a str]) -> Vec<&'a str> {
    let mut v: Vec<&str> = nodes.to_vec();
    v.sort_by(|a, b| weight(shard, b).cmp(&weight(shard, a)).then_with(|| a.cmp(b)));
    v.dedup();
    v
}

/// The member that delivers the queue `name`: the heaviest of `nodes` for it (the same
/// rendezvous hashing as shards, keyed by the name), so every node names the same one
/// and a member coming or going moves only the queues it wins or held.
pub fn queue_owner<'a>(name: &str, nodes: &[&'a str]) -> Option<&'a str> {
    let key = xxhash_rust::xxh3::xxh3_64(name.as_bytes());
    nodes.iter().copied().max_by(|a, b| {
        let (wa, wb) = (xxh3_64_with_seed(a.as_bytes(), key), xxh3_64_with_seed(b.as_bytes(), key));
        wa.cmp(&wb).then_with(|| b.cmp(a))
    })
}

/// Which members hold each shard: for shard `n`, the `replicas` heaviest live members,
/// the first of them its primary.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct ShardMap {
    pub replicas: Vec<Vec<String>>,
}

impl ShardMap {
    pub fn compute(shards: u32, replicas: u32, live: &[&str]) -> Self {
        let r = (replicas.max(1) as usize).min(live.len());
        Self {
            replicas: (0..shards).map(|s| ranked(s, live).into_iter().take(r).map(String::from).collect()).collect(),
        }
    }

    pub fn primary(&self, shard: u32) -> Option<&str> {
        self.replicas.get(shard as usize)?.first().map(String::as_str)
    }

    /// The shards `node` holds a replica of.
    pub fn held_by(&self, node: &str) -> Vec<u32> {
        (0..self.replicas.len() as u32).filter(|s| self.replicas[*s as usize].iter().any(|n| n == node)).collect()
    }

    /// Shards whose replica set differs between `self` and `other`.
    pub fn moved(&self, other: &ShardMap) -> Vec<u32> {
        (0..self.replicas.len().max(other.replicas.len()) as u32)
            .filter(|s| self.replicas.get(*s as usize) != other.replicas.get(*s as usize))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_node_names_the_same_queue_owner_and_a_leaver_moves_only_its_own() {
        let all = ["a", "b", "c", "d"];
        let names: Vec<String> = (0..200).map(|i| format!("queue-{i}")).collect();
        let owner = |n: &str, nodes: &[&str]| queue_owner(n, nodes).unwrap().to_string();
        let mut held = std::collections::BTreeMap::<String, usize>::new();
        for n in &names {
            let mut shuffled = all;
            shuffled.reverse();
            assert_eq!(owner(n, &all), owner(n, &shuffled), "the order of members does not matter");
            *held.entry(owner(n, &all)).or_default() += 1;
            // Without c, only c's queues move.
            let without_c = ["a", "b", "d"];
            if owner(n, &all) != "c" {
                assert_eq!(owner(n, &all), owner(n, &without_c));
            }
        }
        assert_eq!(held.len(), 4, "every member delivers some: {held:?}");
        assert_eq!(queue_owner("q", &[]), None);
    }

    #[test]
    fn every_shard_gets_distinct_replicas_and_a_primary() {
        let m = ShardMap::compute(64, 2, &["a", "b", "c"]);
        for s in 0..64 {
            let r = &m.replicas[s as usize];
            assert_eq!(r.len(), 2);
            assert_ne!(r[0], r[1]);
            assert_eq!(m.primary(s), Some(r[0].as_str()));
        }
        // Spread: each of three members holds some shards, none holds them all.
        for n in ["a", "b", "c"] {
            let held = m.held_by(n).len();
            assert!(held > 20 && held < 64, "{n} holds {held}");
        }
    }

    #[test]
    fn fewer_members_than_replicas_hold_what_they_can() {
        let m = ShardMap::compute(8, 3, &["solo"]);
        assert!(m.replicas.iter().all(|r| r == &vec!["solo".to_string()]));
        assert_eq!(ShardMap::compute(4, 2, &[]).replicas, vec![Vec::<String>::new(); 4]);
    }

    #[test]
    fn the_member_list_order_does_not_matter() {
        assert_eq!(ShardMap::compute(64, 2, &["a", "b", "c"]), ShardMap::compute(64, 2, &["c", "a", "b"]));
    }

    proptest::proptest! {
        /// A member joining only takes shards: every shard that moves gets the newcomer,
        /// and keeps the rest of its replicas in order.
        #[test]
        fn a_join_moves_only_shards_the_newcomer_takes(n in 1usize..8, r in 1u32..4) {
            let names: Vec<String> = (0..=n).map(|i| format!("node-{i}")).collect();
            let before: Vec<&str> = names[..n].iter().map(String::as_str).collect();
            let after: Vec<&str> = names.iter().map(String::as_str).collect();
            let newcomer = names[n].as_str();
            let (a, b) = (ShardMap::compute(64, r, &before), ShardMap::compute(64, r, &after));
            for s in a.moved(&b) {
                let (old, new) = (&a.replicas[s as usize], &b.replicas[s as usize]);
                proptest::prop_assert!(new.iter().any(|x| x == newcomer));
                let kept: Vec<&String> = new.iter().filter(|x| x.as_str() != newcomer).collect();
                let old_kept: Vec<&String> = old.iter().take(kept.len()).collect();
                proptest::prop_assert_eq!(kept, old_kept);
            }
            // Shards the newcomer does not take stay where they were.
            for s in 0..64u32 {
                if !b.replicas[s as usize].iter().any(|x| x == newcomer) {
                    proptest::prop_assert_eq!(&a.replicas[s as usize], &b.replicas[s as usize]);
                }
            }
        }

        /// A member leaving moves only the shards it held.
        #[test]
        fn a_leave_moves_only_the_leavers_shards(n in 2usize..8, r in 1u32..4, gone in 0usize..8) {
            let names: Vec<String> = (0..n).map(|i| format!("node-{i}")).collect();
            let gone = &names[gone % n];
            let all: Vec<&str> = names.iter().map(String::as_str).collect();
            let rest: Vec<&str> = all.iter().copied().filter(|x| x != gone).collect();
            let (a, b) = (ShardMap::compute(64, r, &all), ShardMap::compute(64, r, &rest));
            for s in a.moved(&b) {
                proptest::prop_assert!(a.replicas[s as usize].contains(gone));
            }
        }
    }
}
