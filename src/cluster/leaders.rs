//! The leader of each partition, for routing: what a node learns of the
//! partitions it does not host (`NOT_LEADER` naming the leader, `Metadata`
//! listing every partition's leader).
//!
//! The controller sends each node the full state ([`LeaderAndIsr`]) only
//! of the partitions it hosts; for every partition changed in a notice
//! round (every partition after an election, or to a node that joined) it
//! builds one [`Leaders`] map and shares it (`Arc`) between every node's
//! notice: at 100 nodes x 100,000 partitions one map of 100,000 entries of
//! 16 bytes (each distinct replica list stored once), not 100 copies of
//! 100,000 states.
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
    /// Index of the partition's replicas in [`Leaders::sets`].
    pub replicas: u32,
}

/// Leaders of a set of partitions, compactly (node ids stored once).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Leaders {
    /// Every partition of the cluster is in the map (after an election or
    /// to a node that joined): it supersedes the maps before it.
    pub full: bool,
    /// Node ids the entries refer to.
    pub ids: Vec<String>,
    /// Replica lists (indexes into `ids`), each stored once: partitions
    /// share them (N distinct lists for P partitions as assigned).
    pub sets: Vec<Vec<u32>>,
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
        let mut sets = std::collections::HashMap::new();
        for s in states {
            out.push_interned(
                &mut sets,
                s.partition,
                s.leader_epoch,
                s.leader.as_deref(),
                &s.replicas,
            );
        }
        out.sort();
        out
    }

    /// Adds an entry, storing its replica list once (`sets` remembers the
    /// lists stored).
    fn push_interned(
        &mut self,
        sets: &mut std::collections::HashMap<Vec<u32>, u32>,
        partition: u32,
        leader_epoch: u32,
        leader: Option<&str>,
        replicas: &[String],
    ) {
        let leader = leader.map_or(0, |l| self.index(l) + 1);
        let list: Vec<u32> = replicas.iter().map(|r| self.index(r)).collect();
        let next = self.sets.len() as u32;
        let at = *sets.entry(list.clone()).or_insert(next);
        if at == next {
            self.sets.push(list);
        }
        self.entries.push(LeaderEntry {
            partition,
            leader_epoch,
            leader,
            replicas: at,
        });
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

    /// Adds an entry: `leader` and `replicas` are node ids.
    pub fn push(
        &mut self,
        partition: u32,
        leader_epoch: u32,
        leader: Option<&str>,
        replicas: &[String],
    ) {
        let mut sets = self
            .sets
            .iter()
            .enumerate()
            .map(|(i, s)| (s.clone(), i as u32))
            .collect();
        self.push_interned(&mut sets, partition, leader_epoch, leader, replicas);
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

    /// The replicas of `e` (node ids, the preferred leader first).
    pub fn replicas_of(&self, e: &LeaderEntry) -> Vec<String> {
        self.sets
            .get(e.replicas as usize)
            .map(|set| {
                set.iter()
                    .filter_map(|&i| self.ids.get(i as usize).cloned())
                    .collect()
            })
            .unwrap_or_default()
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
        let mut best: std::collections::BTreeMap<u32, (u32, &Leaders, &LeaderEntry)> =
            std::collections::BTreeMap::new();
        for m in maps {
            for e in &m.entries {
                let newer = best
                    .get(&e.partition)
                    .is_none_or(|(epoch, _, _)| e.leader_epoch >= *epoch);
                if newer {
                    best.insert(e.partition, (e.leader_epoch, m, e));
                }
            }
        }
        let mut out = Leaders {
            full: maps.iter().any(|m| m.full),
            ..Leaders::default()
        };
        let mut sets = std::collections::HashMap::new();
        for (p, (epoch, m, e)) in best {
            let replicas = m.replicas_of(e);
            out.push_interned(&mut sets, p, epoch, m.leader_of(e), &replicas);
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
        // One replica list for all four partitions.
        assert_eq!(m.sets, vec![vec![1, 0]]);
        let e = m.get(1).expect("partition 1");
        assert_eq!(m.replicas_of(e), vec!["a".to_string(), "b".to_string()]);
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
