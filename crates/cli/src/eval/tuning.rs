//! Parameter sweeps and honest tuning: [`grid`] lists the configurations to try, and
//! [`pick`] chooses one on a tuning fold by a rule fixed in advance (the best BCubed F among
//! configurations with pairwise precision >= [`MIN_PRECISION`], else the most precise), so
//! the held fold's figures for the chosen configuration are what unseen people would get.

use facegroup_core::group::GroupConfig;

use super::report::Row;
use super::EvalArgs;

/// Pairwise precision a tuned configuration must reach on its tuning fold: above the 0.99
/// target, so the held fold keeps a margin.
pub const MIN_PRECISION: f64 = 0.995;

/// The configurations to try: the default, or every combination of the listed values.
pub fn grid(args: &EvalArgs) -> Vec<GroupConfig> {
    let mut base = GroupConfig::default();
    if let Some(m) = args.min_cluster_size {
        base.min_cluster_size = m;
    }
    if let Some(k) = args.k {
        base.knn.k = k;
    }
    let or = |list: &[f32], default: f32| {
        if list.is_empty() {
            vec![default]
        } else {
            list.to_vec()
        }
    };
    let mut out = vec![base.clone()];
    type Set = fn(&mut GroupConfig, f32);
    let axes: [(&[f32], f32, Set); 6] = [
        (&args.pair_thresholds, base.pair_threshold, |c, v| {
            c.pair_threshold = v
        }),
        (&args.merge_thresholds, base.merge_threshold, |c, v| {
            c.merge_threshold = v
        }),
        (&args.attach_thresholds, base.attach_threshold, |c, v| {
            c.attach_threshold = v
        }),
        (&args.cohesion_ratios, base.cohesion_ratio, |c, v| {
            c.cohesion_ratio = v
        }),
        (&args.cohesion_priors, base.cohesion_prior, |c, v| {
            c.cohesion_prior = v
        }),
        (
            &args.cohesion_prior_pairs,
            base.cohesion_prior_pairs,
            |c, v| c.cohesion_prior_pairs = v,
        ),
    ];
    for (list, default, set) in axes {
        out = out
            .into_iter()
            .flat_map(|c| {
                or(list, default).into_iter().map(move |v| {
                    let mut c = c.clone();
                    set(&mut c, v);
                    c
                })
            })
            .collect();
    }
    out
}

/// Index of the row the tuning rule picks (the first of equals: grid order breaks ties).
pub fn pick(rows: &[Row]) -> Option<usize> {
    let key = |r: &Row| {
        let p = r.scores.pairwise.precision;
        if p >= MIN_PRECISION {
            (1, r.scores.bcubed.f)
        } else {
            (0, p)
        }
    };
    let mut best: Option<usize> = None;
    for (i, r) in rows.iter().enumerate() {
        if best.is_none_or(|b| key(r) > key(&rows[b])) {
            best = Some(i);
        }
    }
    best
}
