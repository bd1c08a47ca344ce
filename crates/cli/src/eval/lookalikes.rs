//! `--lookalikes N`: the N pairs of identities that look most alike to the embedder (highest
//! cosine between their mean labelled-face embeddings, identities with at least 3 photos), each
//! grouped on its own at the given settings as a gallery holding just those two people would be,
//! e.g. two siblings. A pairwise precision below 1 means a person mixes the two.
//!
//! Relatives are not labelled in the dev sets; the closest means are the nearest stand-in (the
//! same failure: one person absorbing another who is close but not the same), and
//! `lookalike_identities_stay_apart_at_the_defaults` (`crates/cli/tests/cli.rs`) keeps the closest pairs apart at the defaults.

use std::collections::BTreeMap;

use anyhow::Result;
use facegroup_core::group::GroupConfig;
use serde_json::json;

use super::cache::Photo;
use super::dataset::Subset;
use super::methods::{self, Faces};
use super::Labelled;

/// Prints the `n` closest pairs and how `cfg` groups each.
pub fn report(
    set: &Labelled<'_>,
    photos: &[Option<Photo>],
    n: usize,
    cfg: &GroupConfig,
) -> Result<()> {
    let Labelled {
        items,
        identity,
        name: dataset,
        json,
    } = *set;
    // Mean direction and photos per identity, over the labelled faces.
    let mut by_id: BTreeMap<u32, (Vec<f32>, Vec<usize>)> = BTreeMap::new();
    for (i, p) in photos.iter().enumerate() {
        let Some(face) = p.as_ref().and_then(Photo::labelled) else {
            continue;
        };
        let entry = by_id
            .entry(identity[i])
            .or_insert_with(|| (vec![0.0; face.embedding.len()], Vec::new()));
        let norm = face
            .embedding
            .iter()
            .map(|v| v * v)
            .sum::<f32>()
            .sqrt()
            .max(1e-12);
        for (s, v) in entry.0.iter_mut().zip(&face.embedding) {
            *s += v / norm;
        }
        entry.1.push(i);
    }
    let ids: Vec<(u32, Vec<f32>, Vec<usize>)> = by_id
        .into_iter()
        .filter(|(_, (_, items))| items.len() >= 3)
        .map(|(id, (sum, items))| {
            let norm = sum.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            (id, sum.iter().map(|v| v / norm).collect(), items)
        })
        .collect();
    let mut pairs = Vec::new();
    for a in 0..ids.len() {
        for b in a + 1..ids.len() {
            let cos: f32 = ids[a].1.iter().zip(&ids[b].1).map(|(x, y)| x * y).sum();
            pairs.push((cos, a, b));
        }
    }
    pairs.sort_by(|x, y| y.0.total_cmp(&x.0).then((x.1, x.2).cmp(&(y.1, y.2))));
    let name = |k: usize| items[ids[k].2[0]].identity.clone();
    for &(cos, a, b) in pairs.iter().take(n) {
        let mut members: Vec<usize> = ids[a].2.iter().chain(&ids[b].2).copied().collect();
        members.sort_unstable();
        let subset = Subset {
            name: format!("{} + {}", name(a), name(b)),
            items: members,
        };
        let faces = Faces::new(items, identity, photos, &subset, false);
        let row = methods::facegroup(&faces, cfg)?;
        if json {
            println!(
                "{}",
                json!({
                    "dataset": dataset,
                    "lookalikes": [name(a), name(b)],
                    "mean_cosine": cos,
                    "photos": [ids[a].2.len(), ids[b].2.len()],
                    "pairwise_precision": row.scores.pairwise.precision,
                    "bcubed_f": row.scores.bcubed.f,
                    "persons": row.persons,
                })
            );
        } else {
            println!(
                "{dataset}: {} ({} photos) + {} ({} photos), mean cosine {cos:.3}: pairwise P \
                 {:.3}, BCubed F {:.3}, {} persons",
                name(a),
                ids[a].2.len(),
                name(b),
                ids[b].2.len(),
                row.scores.pairwise.precision,
                row.scores.bcubed.f,
                row.persons
            );
        }
    }
    Ok(())
}
