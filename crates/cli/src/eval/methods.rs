//! The grouping methods under test, all on the same embedded faces of one subset: facegroup
//! ([`facegroup_core::group_faces`]) and the baselines of `group::baselines`. Each returns a
//! predicted person per scored photo (the person of its labelled face).

use std::collections::HashMap;
use std::time::Instant;

use anyhow::{Context, Result};
use facegroup_core::group::{baselines, FaceInput, GroupConfig};
use facegroup_core::group_faces;

use super::cache::Photo;
use super::dataset::{fnv1a, Item, Subset};
use super::report::Row;

/// The faces of one subset as grouping input.
pub struct Faces<'a> {
    items: &'a [Item],
    /// Every face to group, ids `<photo>#<face>` (photo = item index), image id `<photo>`.
    inputs: Vec<FaceInput>,
    /// Per scored photo (the subset's items, in order), the index in `inputs` of its labelled
    /// face; `None` for a photo without a face (scored as an unassigned, missed item).
    labelled: Vec<Option<usize>>,
    /// Identity number per scored photo.
    pub truth: Vec<u32>,
}

impl<'a> Faces<'a> {
    /// The labelled face of each photo of `subset`, or with `all_faces` every detected face
    /// (background people included: they are grouped, cannot-linked within their photo, and
    /// not scored).
    pub fn new(
        items: &'a [Item],
        identity: &[u32],
        photos: &[Option<Photo>],
        subset: &Subset,
        all_faces: bool,
    ) -> Self {
        let mut inputs = Vec::new();
        let mut labelled = Vec::with_capacity(subset.items.len());
        for &i in &subset.items {
            let Some(photo) = photos[i].as_ref() else {
                labelled.push(None);
                continue;
            };
            let mut mine = None;
            for (k, face) in photo.faces.iter().enumerate() {
                let is_labelled = photo.labelled == Some(k);
                if !all_faces && !is_labelled {
                    continue;
                }
                if is_labelled {
                    mine = Some(inputs.len());
                }
                inputs.push(FaceInput {
                    face_id: format!("{i:07}#{k:03}"),
                    image_id: format!("{i:07}"),
                    embedding: face.embedding.clone(),
                    quality_ok: face.quality_ok,
                    quality: face.quality,
                });
            }
            labelled.push(mine);
        }
        Self {
            items,
            inputs,
            labelled,
            truth: subset.items.iter().map(|&i| identity[i]).collect(),
        }
    }

    /// Number of faces grouped.
    pub fn len(&self) -> usize {
        self.inputs.len()
    }

    /// Per scored photo, the label of its labelled face from a label per input face.
    fn scored(&self, per_face: &[Option<u32>]) -> Vec<Option<u32>> {
        self.labelled
            .iter()
            .map(|l| l.and_then(|f| per_face[f]))
            .collect()
    }
}

/// facegroup's grouping with `cfg`.
pub fn facegroup(faces: &Faces<'_>, cfg: &GroupConfig) -> Result<Row> {
    let started = Instant::now();
    let groups = group_faces(&faces.inputs, cfg, None, None)?;
    let index: HashMap<&str, usize> = faces
        .inputs
        .iter()
        .enumerate()
        .map(|(i, f)| (f.face_id.as_str(), i))
        .collect();
    let mut per_face = vec![None; faces.inputs.len()];
    for (p, person) in groups.persons.iter().enumerate() {
        for id in &person.face_ids {
            let i = *index
                .get(id.as_str())
                .context("grouping returned an unknown face")?;
            per_face[i] = Some(p as u32);
        }
    }
    Ok(Row::new(
        format!(
            "facegroup (pair {:.2} merge {:.3} attach {:.3} cohesion {:.2}/{:.2}/{:.0})",
            cfg.pair_threshold,
            cfg.merge_threshold,
            cfg.attach_threshold,
            cfg.cohesion_ratio,
            cfg.cohesion_prior,
            cfg.cohesion_prior_pairs
        ),
        &faces.truth,
        &faces.scored(&per_face),
        started,
    ))
}

/// Connected components at cos >= 0.5, DBSCAN (eps 0.5 cosine distance, min_samples 3:
/// Immich's defaults) and Immich-style incremental assignment (maxDistance 0.5, minFaces 3).
pub fn baselines(faces: &Faces<'_>) -> Vec<Row> {
    let dim = faces.inputs.first().map_or(0, |f| f.embedding.len());
    let data: Vec<f32> = faces
        .inputs
        .iter()
        .flat_map(|f| {
            let norm = f
                .embedding
                .iter()
                .map(|x| x * x)
                .sum::<f32>()
                .sqrt()
                .max(1e-12);
            f.embedding.iter().map(move |x| x / norm)
        })
        .collect();
    let mut rows = Vec::new();
    let started = Instant::now();
    let near = baselines::radius_neighbours(&data, dim, 0.5);
    rows.push(Row::new(
        "connected components, cos >= 0.5".to_owned(),
        &faces.truth,
        &faces.scored(&baselines::connected_components(&near, 2)),
        started,
    ));
    let started = Instant::now();
    rows.push(Row::new(
        "DBSCAN eps 0.5, min_samples 3".to_owned(),
        &faces.truth,
        &faces.scored(&baselines::dbscan(&near, 3)),
        started,
    ));
    // Immich sees faces in upload order; labels.csv is sorted by identity, which no gallery
    // is, so faces are taken in a fixed pseudo-random order (a hash of the photo path).
    let photo_path = |f: &FaceInput| {
        let i: usize = f.image_id.parse().unwrap_or(0);
        faces.items.get(i).map_or("", |it| it.path.as_str())
    };
    let mut order: Vec<usize> = (0..faces.inputs.len()).collect();
    order.sort_by_key(|&f| (fnv1a(photo_path(&faces.inputs[f]).as_bytes()), f));
    let mut position = vec![0u32; order.len()];
    for (p, &f) in order.iter().enumerate() {
        position[f] = p as u32;
    }
    let permuted: baselines::Neighbourhoods = order
        .iter()
        .map(|&f| {
            near[f]
                .iter()
                .map(|&(j, s)| (position[j as usize], s))
                .collect()
        })
        .collect();
    let started = Instant::now();
    let by_position = baselines::immich(&permuted, 3);
    let per_face: Vec<Option<u32>> = (0..order.len())
        .map(|f| by_position[position[f] as usize])
        .collect();
    rows.push(Row::new(
        "Immich-style, maxDistance 0.5, minFaces 3".to_owned(),
        &faces.truth,
        &faces.scored(&per_face),
        started,
    ));
    rows
}
