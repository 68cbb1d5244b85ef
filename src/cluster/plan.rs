//! The reassignment plan generator: from the current replicas of every
//! partition, the eligible nodes (live, not decommissioned) and the
//! replication factor, the target replicas of every partition. Pure (no
//! I/O): the CLI (`caskade-cli cluster reassign plan`, `decommission`) and
//! the controller's auto rebalance (`zk/rebalance.rs`) both call [`plan`].
//!
//! Algorithm (`N` eligible nodes, `P` partitions, `T = P * rf` replicas):
//! 1. keep every current replica that sits on an eligible node (at most
//!    `rf` per partition, duplicates dropped);
//! 2. quotas: `T / N` each, plus one for the `T % N` nodes holding the most
//!    replicas now (the ones that would otherwise have to give one up);
//!    fill the partitions' missing replicas (left by ineligible nodes) one
//!    at a time: the node below a cap with the least slack (partitions
//!    lacking it minus its deficit) first, into the partition lacking it
//!    with the fewest nodes below the cap to choose from. The cap is
//!    `T / N`, then `T / N + 1` once no node below `T / N` fits; then the
//!    node holding the fewest replicas;
//! 3. quotas again, from the counts after step 2;
//! 4. while a node holds more than its quota, move one of its replicas to
//!    the node furthest below its quota, in a partition holding the first
//!    and not the second (one always exists: the first holds more replicas
//!    than the second, so some partition has it and not the second),
//!    preferring a replica step 2 added (so the fill goes elsewhere at no
//!    extra move), then a partition it does not lead;
//! 5. preferred leaders (the first replica): each partition keeps its
//!    current first replica when it is still a replica, else takes the
//!    replica leading the fewest; then, while some node leads two more
//!    than another, leadership moves along a shortest path of partitions
//!    (u leads p, v is a replica of p: p goes to v) from a node leading
//!    the most to one leading the fewest.
//!
//! Invariants of the result (property tests below):
//! - every partition has exactly `rf` distinct replicas, all eligible;
//! - replica counts of eligible nodes differ by at most 1;
//! - preferred-leader counts of eligible nodes differ by at most 1;
//! - moves (replicas in a target that the partition did not have) are at
//!   least [`Plan::lower_bound`] = `forced + excess` and at most
//!   `lower_bound + forced`. `forced` is the replicas the partitions lack
//!   on eligible nodes (step 2); `excess` the sum over nodes of what they
//!   hold above their quota (step 4). No balanced plan moves fewer than
//!   `lower_bound`: a node keeps at most `min(held, quota)` of its
//!   replicas, and the quotas of step 3 maximise that sum. Each move of
//!   step 4 takes one replica above quota, and each fill of step 2 adds at
//!   most one such replica, hence the upper bound. Existing replicas on
//!   eligible nodes are only ever dropped by step 4. On small clusters the
//!   result is also checked against an exhaustive search.
//! - a partition whose replicas and first replica stay is left out of
//!   [`Plan::moves`] (it is not in the plan written to `/admin/reassign`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Above this many partitions lacking replicas, step 2 fills them in id
/// order instead of most constrained first (which costs a scan of them all
/// per replica).
const CONSTRAINED_FIRST_LIMIT: usize = 10_000;

/// Why no plan can be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// Fewer eligible nodes than the replication factor.
    #[error(
        "{eligible} eligible node(s) ({nodes}) cannot hold {rf} replicas of each partition; \
         add nodes or recommission some"
    )]
    TooFewNodes {
        /// Eligible nodes given.
        eligible: usize,
        /// Their ids, comma separated.
        nodes: String,
        /// The replication factor.
        rf: usize,
    },
    /// A replication factor of 0.
    #[error("the replication factor must be at least 1")]
    ZeroReplicationFactor,
}

/// A computed plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Target replicas of every partition given (first = preferred leader).
    pub target: BTreeMap<u32, Vec<String>>,
    /// Partitions whose target differs from their current replicas (set or
    /// order): what `/admin/reassign` gets.
    pub changed: BTreeMap<u32, Vec<String>>,
    /// `forced + excess` (see the module doc): no balanced plan moves
    /// fewer replicas.
    pub lower_bound: usize,
}

impl Plan {
    /// Replicas added by the plan over all partitions (each one is copied
    /// to its new node, and one replica is dropped elsewhere for it).
    pub fn moves(&self, current: &BTreeMap<u32, Vec<String>>) -> usize {
        moves(current, &self.target)
    }
}

/// Replicas in `target` that `current` lacks, over every partition.
pub fn moves(current: &BTreeMap<u32, Vec<String>>, target: &BTreeMap<u32, Vec<String>>) -> usize {
    target
        .iter()
        .map(|(p, t)| {
            let cur = current.get(p).map(Vec::as_slice).unwrap_or(&[]);
            t.iter().filter(|n| !cur.contains(n)).count()
        })
        .sum()
}

/// The target replicas of every partition of `current` (see the module
/// doc). `eligible` need not be sorted; duplicates are ignored.
pub fn plan(
    current: &BTreeMap<u32, Vec<String>>,
    eligible: &[String],
    rf: usize,
) -> Result<Plan, PlanError> {
    if rf == 0 {
        return Err(PlanError::ZeroReplicationFactor);
    }
    let nodes: Vec<String> = eligible
        .iter()
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if nodes.len() < rf {
        return Err(PlanError::TooFewNodes {
            eligible: nodes.len(),
            nodes: if nodes.is_empty() {
                "none".into()
            } else {
                nodes.join(",")
            },
            rf,
        });
    }
    let n = nodes.len();
    let index = |id: &str| nodes.binary_search_by(|x| x.as_str().cmp(id)).ok();
    let parts: Vec<u32> = current.keys().copied().collect();

    // 1. Keep the eligible replicas (as node indexes, in current order).
    let mut sets: Vec<Vec<usize>> = parts
        .iter()
        .map(|p| {
            let mut kept = Vec::with_capacity(rf);
            for id in &current[p] {
                if let Some(i) = index(id)
                    && !kept.contains(&i)
                    && kept.len() < rf
                {
                    kept.push(i);
                }
            }
            kept
        })
        .collect();
    let kept = sets.clone();
    let mut count = vec![0usize; n];
    for s in &sets {
        for &i in s {
            count[i] += 1;
        }
    }
    let total = parts.len() * rf;
    let quotas = |count: &[usize]| {
        let (base, extra) = (total / n, total % n);
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| count[b].cmp(&count[a]).then(a.cmp(&b)));
        let mut q = vec![base; n];
        for &i in order.iter().take(extra) {
            q[i] += 1;
        }
        q
    };
    let q0 = quotas(&count);
    let forced: usize = sets.iter().map(|s| rf - s.len()).sum();
    let excess: usize = (0..n).map(|i| count[i].saturating_sub(q0[i])).sum();

    // 2. Fill the holes, one replica at a time: the node below its cap
    // with the least slack (partitions with a hole that lack it, minus
    // its deficit) goes first, into the partition lacking it with the
    // fewest such nodes to choose from. The cap is `T / N` first: which
    // nodes hold the `T % N` replicas above that is left open until no
    // deficit fits; then `T / N + 1`.
    let base = total / n;
    let mut cap = base;
    let mut deficit: Vec<usize> = (0..n).map(|i| base.saturating_sub(count[i])).collect();
    let mut holes: Vec<usize> = (0..sets.len()).filter(|&k| sets[k].len() < rf).collect();
    holes.sort_unstable();
    while !holes.is_empty() {
        let constrained = holes.len() <= CONSTRAINED_FIRST_LIMIT;
        let mut avail = vec![0usize; n];
        if constrained {
            for &k in &holes {
                for (i, a) in avail.iter_mut().enumerate() {
                    if !sets[k].contains(&i) {
                        *a += 1;
                    }
                }
            }
        }
        let node = (0..n).filter(|&i| deficit[i] > 0).min_by_key(|&i| {
            (
                avail[i] as i64 - deficit[i] as i64,
                std::cmp::Reverse(deficit[i]),
                i,
            )
        });
        let open = deficit.iter().filter(|&&d| d > 0).count();
        let choices = |k: usize| open - sets[k].iter().filter(|&&i| deficit[i] > 0).count();
        let slot = node.and_then(|i| {
            (0..holes.len())
                .filter(|&h| !sets[holes[h]].contains(&i))
                .min_by_key(|&h| (if constrained { choices(holes[h]) } else { 0 }, holes[h]))
                .map(|h| (h, i))
        });
        let (at, pick) = match (node, slot) {
            (_, Some(s)) => s,
            // Below its quota but no partition with a hole lacks it: step
            // 4 moves replicas to it.
            (Some(i), None) => {
                deficit[i] = 0;
                continue;
            }
            (None, None) if cap == base => {
                cap = base + 1;
                deficit = (0..n).map(|i| cap.saturating_sub(count[i])).collect();
                continue;
            }
            // Every node is at `T / N + 1`: the partition takes the node
            // holding the fewest replicas.
            (None, None) => {
                let k = holes[0];
                let i = (0..n)
                    .filter(|i| !sets[k].contains(i))
                    .min_by_key(|&i| (count[i], i))
                    .expect("n >= rf leaves a node outside any partition with a hole");
                (0, i)
            }
        };
        let k = holes[at];
        sets[k].push(pick);
        count[pick] += 1;
        deficit[pick] = deficit[pick].saturating_sub(1);
        if sets[k].len() == rf {
            holes.remove(at);
        }
    }

    // 3 and 4. Move replicas from nodes above their quota.
    let q = quotas(&count);
    let mut leader: Vec<usize> = sets.iter().map(|s| s[0]).collect();
    while let Some(from) = (0..n)
        .filter(|&i| count[i] > q[i])
        .max_by_key(|&i| (count[i] - q[i], std::cmp::Reverse(i)))
    {
        let Some(to) = (0..n)
            .filter(|&i| count[i] < q[i])
            .max_by_key(|&i| (q[i] - count[i], std::cmp::Reverse(i)))
        else {
            break;
        };
        let candidates =
            (0..sets.len()).filter(|&k| sets[k].contains(&from) && !sets[k].contains(&to));
        // Prefer a replica step 2 added (moving it costs nothing more),
        // then a partition `from` does not lead, then the lowest id.
        let Some(k) = candidates.min_by_key(|&k| (kept[k].contains(&from), leader[k] == from, k))
        else {
            break;
        };
        let pos = sets[k].iter().position(|&i| i == from).unwrap_or(0);
        sets[k][pos] = to;
        if leader[k] == from {
            leader[k] = to;
        }
        count[from] -= 1;
        count[to] += 1;
    }

    // 5. Preferred leaders: keep the current one where it stays.
    let mut leads = vec![0usize; n];
    for (k, p) in parts.iter().enumerate() {
        let current_first = current[p].first().and_then(|id| index(id));
        leader[k] = match current_first.filter(|i| sets[k].contains(i)) {
            Some(i) => i,
            None => usize::MAX,
        };
        if leader[k] != usize::MAX {
            leads[leader[k]] += 1;
        }
    }
    for k in 0..sets.len() {
        if leader[k] == usize::MAX {
            let pick = sets[k]
                .iter()
                .copied()
                .min_by_key(|&i| (leads[i], i))
                .expect("rf >= 1");
            leader[k] = pick;
            leads[pick] += 1;
        }
    }
    balance_leaders(&sets, &mut leader, &mut leads);

    let mut target = BTreeMap::new();
    let mut changed = BTreeMap::new();
    for (k, p) in parts.iter().enumerate() {
        let mut list = vec![nodes[leader[k]].clone()];
        list.extend(
            sets[k]
                .iter()
                .filter(|&&i| i != leader[k])
                .map(|&i| nodes[i].clone()),
        );
        if current[p] != list {
            changed.insert(*p, list.clone());
        }
        target.insert(*p, list);
    }
    Ok(Plan {
        target,
        changed,
        lower_bound: forced + excess,
    })
}

/// Moves preferred leadership along shortest paths until every node leads
/// within one of every other (see the module doc, step 5).
fn balance_leaders(sets: &[Vec<usize>], leader: &mut [usize], leads: &mut [usize]) {
    let n = leads.len();
    // Partitions by the node leading them.
    loop {
        let max = *leads.iter().max().unwrap_or(&0);
        let min = *leads.iter().min().unwrap_or(&0);
        if max <= min + 1 {
            return;
        }
        // BFS from every node leading `max`; goal: a node leading `min`.
        // prev[v] = (u, k): v reached from u by moving partition k.
        let mut prev: Vec<Option<(usize, usize)>> = vec![None; n];
        let mut seen = vec![false; n];
        let mut queue = VecDeque::new();
        for u in 0..n {
            if leads[u] == max {
                seen[u] = true;
                queue.push_back(u);
            }
        }
        let mut goal = None;
        'bfs: while let Some(u) = queue.pop_front() {
            for (k, s) in sets.iter().enumerate() {
                if leader[k] != u {
                    continue;
                }
                for &v in s {
                    if !seen[v] {
                        seen[v] = true;
                        prev[v] = Some((u, k));
                        if leads[v] + 1 < max {
                            goal = Some(v);
                            break 'bfs;
                        }
                        queue.push_back(v);
                    }
                }
            }
        }
        let Some(mut v) = goal else {
            return;
        };
        // Shift along the path: every partition on it goes one step.
        leads[v] += 1;
        while let Some((u, k)) = prev[v] {
            leader[k] = v;
            v = u;
            if prev[v].is_none() {
                leads[v] -= 1;
            }
        }
    }
}

#[cfg(test)]
mod tests;
