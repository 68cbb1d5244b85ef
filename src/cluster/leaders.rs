//! The leader of each partition, for routing: what a node learns of the
//! partitions it does not host (`NOT_LEADER` naming the leader, `Metadata`
//! listing every partition's leader).
//!
//! The controller sends each node the full state ([`LeaderAndIsr`]) only
//! of the partitions it hosts; for every partition changed in a notice
//! round (every partition after an election, or to a node that joined) it
//! builds one [`Leaders`] map and shares it (`Arc`) between every node's
//! notice: at 100 nodes x 100,000 partitions one map of 100,000 entries of
//! 12 bytes, not 100 copies of 100,000 states.
//!
//! Invariants:
//! - entries are sorted by partition, one per partition;
//! - a routing entry never decides what a node hosts or leads: only a full
//!   state does (`replicas`, and a notice naming the node leader).

use super::LeaderAndIsr;

/// One partition's leader in a [`Leaders`] map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaderEntry {
    /// Partition id.
    pub partition: u32,
    /// Leader epoch of the state the entry was taken from.
    pub leader_epoch: u32,
    /// Index of the leader in [`Leaders::ids`] plus one; 0 when the
    /// partition is offline.
    pub leader: u32,
}

/// Leaders of a set of partitions, compactly (node ids stored once).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Leaders {
    /// Every partition of the cluster is in the map (after an election or
    /// to a node that joined): it supersedes the maps before it.
    pub full: bool,
    /// Node ids the entries refer to.
    pub ids: Vec<String>,
    /// One entry per partition, sorted by partition.
    pub entries: Vec<LeaderEntry>,
}

impl Leaders {
    /// The leaders of `states` (any order; one state per partition).
    pub fn of<'a>(states: impl IntoIterator<Item = &'a LeaderAndIsr>, full: bool) -> Leaders {
        let mut out = Leaders {
            full,
            ..Leaders::default()
        };
        for s in states {
            let leader = match &s.leader {
                Some(l) => out.index(l) + 1,
                None => 0,
            };
            out.entries.push(LeaderEntry {
                partition: s.partition,
                leader_epoch: s.leader_epoch,
                leader,
            });
        }
        out.entries.sort_unstable_by_key(|e| e.partition);
        out.entries.dedup_by_key(|e| e.partition);
        out
    }

    /// The index of node id `id` in `ids`, added if missing.
    fn index(&mut self, id: &str) -> u32 {
        match self.ids.iter().position(|i| i == id) {
            Some(i) => i as u32,
            None => {
                self.ids.push(id.to_string());
                (self.ids.len() - 1) as u32
            }
        }
    }

    /// Adds an entry (a wire decoder's way in): `leader` is a node id.
    pub fn push(&mut self, partition: u32, leader_epoch: u32, leader: Option<&str>) {
        let leader = leader.map_or(0, |l| self.index(l) + 1);
        self.entries.push(LeaderEntry {
            partition,
            leader_epoch,
            leader,
        });
    }

    /// Sorts the entries by partition (after [`Leaders::push`]).
    pub fn sort(&mut self) {
        self.entries.sort_unstable_by_key(|e| e.partition);
        self.entries.dedup_by_key(|e| e.partition);
    }

    /// The leader id of `e` (`None`: offline).
    pub fn leader_of(&self, e: &LeaderEntry) -> Option<&str> {
        e.leader
            .checked_sub(1)
            .and_then(|i| self.ids.get(i as usize))
            .map(String::as_str)
    }

    /// The entry of partition `p`, if in the map.
    pub fn get(&self, p: u32) -> Option<&LeaderEntry> {
        self.entries
            .binary_search_by_key(&p, |e| e.partition)
            .ok()
            .map(|i| &self.entries[i])
    }

    /// One map of `maps` (oldest first): per partition the entry with the
    /// highest leader epoch (the later map's on a tie); full if any is.
    pub fn merge(maps: &[std::sync::Arc<Leaders>]) -> Leaders {
        let mut best: std::collections::BTreeMap<u32, (u32, Option<&str>)> =
            std::collections::BTreeMap::new();
        for m in maps {
            for e in &m.entries {
                let newer = best
                    .get(&e.partition)
                    .is_none_or(|(epoch, _)| e.leader_epoch >= *epoch);
                if newer {
                    best.insert(e.partition, (e.leader_epoch, m.leader_of(e)));
                }
            }
        }
        let mut out = Leaders {
            full: maps.iter().any(|m| m.full),
            ..Leaders::default()
        };
        for (p, (epoch, leader)) in best {
            out.push(p, epoch, leader);
        }
        out
    }

    /// Number of partitions in the map.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(p: u32, leader: Option<&str>, epoch: u32) -> LeaderAndIsr {
        LeaderAndIsr {
            partition: p,
            leader: leader.map(String::from),
            leader_epoch: epoch,
            replicas: vec!["a".into(), "b".into()],
            isr: vec!["a".into()],
            controller_epoch: 1,
            zk_version: 0,
            leader_node_epoch: 0,
        }
    }

    #[test]
    fn a_map_stores_each_node_id_once_and_finds_every_partition() {
        let states = [
            st(2, Some("b"), 3),
            st(0, Some("a"), 1),
            st(1, None, 2),
            st(3, Some("a"), 4),
        ];
        let m = Leaders::of(&states, true);
        assert_eq!(m.ids, vec!["b".to_string(), "a".to_string()]);
        assert_eq!(m.len(), 4);
        let got: Vec<(u32, Option<&str>, u32)> = m
            .entries
            .iter()
            .map(|e| (e.partition, m.leader_of(e), e.leader_epoch))
            .collect();
        assert_eq!(
            got,
            vec![
                (0, Some("a"), 1),
                (1, None, 2),
                (2, Some("b"), 3),
                (3, Some("a"), 4)
            ]
        );
        assert_eq!(m.get(2).map(|e| e.leader_epoch), Some(3));
        assert_eq!(m.get(7), None);
    }
}
