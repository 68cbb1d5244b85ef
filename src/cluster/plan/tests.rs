//! Exact small cases and property tests of the plan generator.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

fn ids(s: &str) -> Vec<String> {
    s.split(',')
        .filter(|x| !x.is_empty())
        .map(String::from)
        .collect()
}

/// `"0=a,b,c 1=b,c,a"` as a replica map.
fn map(s: &str) -> BTreeMap<u32, Vec<String>> {
    s.split_whitespace()
        .map(|e| {
            let (p, r) = e.split_once('=').unwrap();
            (p.parse().unwrap(), ids(r))
        })
        .collect()
}

fn show(m: &BTreeMap<u32, Vec<String>>) -> String {
    m.iter()
        .map(|(p, r)| format!("{p}={}", r.join(",")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Replicas and preferred leaders per eligible node.
fn counts(target: &BTreeMap<u32, Vec<String>>, nodes: &[String]) -> (Vec<usize>, Vec<usize>) {
    let reps = nodes
        .iter()
        .map(|n| target.values().filter(|r| r.contains(n)).count())
        .collect();
    let leads = nodes
        .iter()
        .map(|n| target.values().filter(|r| r.first() == Some(n)).count())
        .collect();
    (reps, leads)
}

fn spread(v: &[usize]) -> usize {
    v.iter().max().unwrap_or(&0) - v.iter().min().unwrap_or(&0)
}

/// The 3-node cluster of 8 partitions as the controller assigns it,
/// joined by node-4: node-4 takes 6 replicas (24 / 4), one from each of
/// six partitions, and leads 2 (0 and 1); no other replica moves.
#[test]
fn a_fourth_node_gets_its_share() {
    let current = map(
        "0=node-1,node-2,node-3 1=node-2,node-3,node-1 2=node-3,node-1,node-2 \
         3=node-1,node-2,node-3 4=node-2,node-3,node-1 5=node-3,node-1,node-2 \
         6=node-1,node-2,node-3 7=node-2,node-3,node-1",
    );
    let nodes = ids("node-1,node-2,node-3,node-4");
    let p = plan(&current, &nodes, 3).unwrap();
    assert_eq!(
        show(&p.target),
        "0=node-4,node-1,node-3 1=node-4,node-2,node-3 2=node-3,node-4,node-2 \
         3=node-1,node-2,node-4 4=node-2,node-4,node-1 5=node-3,node-1,node-4 \
         6=node-1,node-2,node-3 7=node-2,node-3,node-1"
    );
    assert_eq!(p.moves(&current), 6);
    assert_eq!(p.lower_bound, 6);
    assert_eq!(
        counts(&p.target, &nodes),
        (vec![6, 6, 6, 6], vec![2, 2, 2, 2])
    );
    assert_eq!(
        p.changed.keys().copied().collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4, 5]
    );
}

/// Decommissioning node-3 of four: each of its replicas moves to the node
/// of the partition that lacks it, and nothing else moves.
#[test]
fn a_decommissioned_node_is_emptied() {
    let current = map(
        "0=node-1,node-2,node-3 1=node-3,node-4,node-1 2=node-2,node-3,node-4 3=node-4,node-1,node-2",
    );
    let nodes = ids("node-1,node-2,node-4");
    let p = plan(&current, &nodes, 3).unwrap();
    assert_eq!(
        show(&p.target),
        "0=node-1,node-2,node-4 1=node-1,node-4,node-2 2=node-2,node-4,node-1 3=node-4,node-1,node-2"
    );
    assert_eq!(p.moves(&current), 3);
    assert!(
        p.target
            .values()
            .all(|r| !r.contains(&"node-3".to_string()))
    );
    assert_eq!(
        show(&p.changed),
        "0=node-1,node-2,node-4 1=node-1,node-4,node-2 2=node-2,node-4,node-1"
    );
}

/// A balanced cluster gets an empty plan.
#[test]
fn balanced_is_left_alone() {
    let current = map("0=a,b 1=b,c 2=c,a");
    let p = plan(&current, &ids("a,b,c"), 2).unwrap();
    assert!(p.changed.is_empty());
    assert_eq!(p.moves(&current), 0);
}

/// Only the preferred leaders are unbalanced: the order changes, no
/// replica moves.
#[test]
fn leaders_alone_are_rebalanced() {
    let current = map("0=a,b 1=a,b 2=a,b 3=a,b");
    let p = plan(&current, &ids("a,b"), 2).unwrap();
    assert_eq!(p.moves(&current), 0);
    assert_eq!(show(&p.target), "0=b,a 1=b,a 2=a,b 3=a,b");
}

#[test]
fn too_few_nodes_is_refused() {
    let current = map("0=a,b,c");
    assert_eq!(
        plan(&current, &ids("a,b"), 3).unwrap_err().to_string(),
        "2 eligible node(s) (a,b) cannot hold 3 replicas of each partition; add nodes or \
         recommission some"
    );
    assert_eq!(
        plan(&current, &[], 1).unwrap_err().to_string(),
        "0 eligible node(s) (none) cannot hold 1 replicas of each partition; add nodes or \
         recommission some"
    );
    assert_eq!(
        plan(&current, &ids("a"), 0).unwrap_err(),
        PlanError::ZeroReplicationFactor
    );
}

/// Fewest moves of any plan balancing replica counts within 1, by trying
/// every choice of replica sets.
fn exhaustive_min(current: &BTreeMap<u32, Vec<String>>, nodes: &[String], rf: usize) -> usize {
    let n = nodes.len();
    let subsets: Vec<Vec<usize>> = (0u32..(1 << n))
        .filter(|m| m.count_ones() as usize == rf)
        .map(|m| (0..n).filter(|i| m & (1 << i) != 0).collect())
        .collect();
    let parts: Vec<&Vec<String>> = current.values().collect();
    let mut best = usize::MAX;
    let mut choice = vec![0usize; parts.len()];
    loop {
        let mut count = vec![0usize; n];
        let mut moved = 0;
        for (k, &c) in choice.iter().enumerate() {
            for &i in &subsets[c] {
                count[i] += 1;
                if !parts[k].contains(&nodes[i]) {
                    moved += 1;
                }
            }
        }
        if spread(&count) <= 1 {
            best = best.min(moved);
        }
        // Next choice (odometer).
        let mut k = 0;
        loop {
            if k == choice.len() {
                return best;
            }
            choice[k] += 1;
            if choice[k] < subsets.len() {
                break;
            }
            choice[k] = 0;
            k += 1;
        }
    }
}

/// Current replicas over a universe of nodes (some of which will not be
/// eligible), with up to `rf` distinct nodes each (fewer = a hole), and an
/// eligible set of at least `rf` nodes.
fn scenario(
    max_nodes: usize,
    max_parts: usize,
) -> impl Strategy<Value = (BTreeMap<u32, Vec<String>>, Vec<String>, usize)> {
    (1usize..=3, 3usize..=max_nodes).prop_flat_map(move |(rf, universe)| {
        let names: Vec<String> = (0..universe).map(|i| format!("n{i}")).collect();
        let part = proptest::sample::subsequence(names.clone(), 0..=rf).prop_shuffle();
        let parts = proptest::collection::vec(part, 1..=max_parts);
        let eligible = proptest::sample::subsequence(names, rf..=universe);
        (parts, eligible, Just(rf)).prop_map(|(parts, eligible, rf)| {
            let current = parts
                .into_iter()
                .enumerate()
                .map(|(p, r)| (p as u32, r))
                .collect();
            (current, eligible, rf)
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Every invariant of the module doc, on clusters up to 12 nodes and
    /// 40 partitions.
    #[test]
    fn plans_are_balanced_valid_and_bounded((current, eligible, rf) in scenario(12, 40)) {
        let p = plan(&current, &eligible, rf).unwrap();
        let mut nodes = eligible.clone();
        nodes.sort();
        for (part, r) in &p.target {
            let mut distinct = r.clone();
            distinct.sort();
            distinct.dedup();
            prop_assert_eq!(distinct.len(), rf, "partition {} got {:?}", part, r);
            prop_assert!(r.iter().all(|n| nodes.contains(n)), "{:?} not eligible", r);
        }
        prop_assert_eq!(p.target.len(), current.len());
        let (reps, leads) = counts(&p.target, &nodes);
        prop_assert!(spread(&reps) <= 1, "replicas {:?}", reps);
        prop_assert!(spread(&leads) <= 1, "leaders {:?}", leads);
        let moves = p.moves(&current);
        let forced: usize = current
            .values()
            .map(|r| rf - r.iter().filter(|n| nodes.contains(n)).count().min(rf))
            .sum();
        prop_assert!(moves >= p.lower_bound, "{} < {}", moves, p.lower_bound);
        prop_assert!(moves <= p.lower_bound + forced, "{} > {} + {}", moves, p.lower_bound, forced);
        for (part, r) in &current {
            prop_assert_eq!(p.changed.contains_key(part), &p.target[part] != r);
        }
        // Planning again from the target changes nothing.
        let again = plan(&p.target, &eligible, rf).unwrap();
        prop_assert!(again.changed.is_empty(), "{}", show(&again.changed));
    }

    /// On small clusters, no plan balancing the replicas moves fewer.
    #[test]
    fn matches_the_exhaustive_optimum((current, eligible, rf) in scenario(5, 4)) {
        let p = plan(&current, &eligible, rf).unwrap();
        let mut nodes = eligible.clone();
        nodes.sort();
        let best = exhaustive_min(&current, &nodes, rf);
        prop_assert_eq!(p.moves(&current), best, "{} -> {}", show(&current), show(&p.target));
    }
}
