//! Clustering quality against labelled identities: pairwise and BCubed precision/recall/F.
//!
//! Pairwise scores count face pairs (dominated by large identities); BCubed averages per face
//! (every face counts equally, so singletons and small identities matter). Faces a method
//! leaves unassigned count as clusters of their own.

use std::collections::HashMap;

/// Precision, recall and their harmonic mean.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prf {
    pub precision: f64,
    pub recall: f64,
    pub f: f64,
}

impl Prf {
    fn new(precision: f64, recall: f64) -> Self {
        let f = if precision + recall > 0.0 {
            2.0 * precision * recall / (precision + recall)
        } else {
            0.0
        };
        Self {
            precision,
            recall,
            f,
        }
    }
}

/// Both scores of one clustering.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scores {
    pub pairwise: Prf,
    pub bcubed: Prf,
}

/// Scores `predicted` (a cluster id per face, `None` = unassigned) against `truth`.
pub fn score(truth: &[u32], predicted: &[Option<u32>]) -> Scores {
    // Unassigned faces become singleton clusters with ids past every real one.
    let singleton_base = predicted
        .iter()
        .flatten()
        .max()
        .map_or(0, |&m| m as u64 + 1);
    let pred: Vec<u64> = predicted
        .iter()
        .enumerate()
        .map(|(i, p)| p.map_or(singleton_base + i as u64, u64::from))
        .collect();
    let mut joint: HashMap<(u64, u32), u64> = HashMap::new();
    let mut pred_size: HashMap<u64, u64> = HashMap::new();
    let mut true_size: HashMap<u32, u64> = HashMap::new();
    for (&p, &t) in pred.iter().zip(truth) {
        *joint.entry((p, t)).or_default() += 1;
        *pred_size.entry(p).or_default() += 1;
        *true_size.entry(t).or_default() += 1;
    }
    let pairs = |n: u64| n * n.saturating_sub(1) / 2;
    let tp: u64 = joint.values().map(|&n| pairs(n)).sum();
    let pred_pairs: u64 = pred_size.values().map(|&n| pairs(n)).sum();
    let true_pairs: u64 = true_size.values().map(|&n| pairs(n)).sum();
    let ratio = |a: u64, b: u64| if b == 0 { 1.0 } else { a as f64 / b as f64 };
    let pairwise = Prf::new(ratio(tp, pred_pairs), ratio(tp, true_pairs));

    // Each face in cell (p, t) has precision n/|p| and recall n/|t|; sum per cell.
    let n = truth.len().max(1) as f64;
    let (mut bp, mut br) = (0.0, 0.0);
    for (&(p, t), &c) in &joint {
        let c = c as f64;
        bp += c * c / pred_size[&p] as f64;
        br += c * c / true_size[&t] as f64;
    }
    Scores {
        pairwise,
        bcubed: Prf::new(bp / n, br / n),
    }
}
