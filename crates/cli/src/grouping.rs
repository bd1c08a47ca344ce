//! Grouping step of `facegroup run`: all analysed faces -> persons, written to `groups.json`.
//!
//! Re-running into the same output folder reads the previous `groups.json` first, so persons
//! keep their ids when photos are added (`--group-mode full` re-clusters everything and matches
//! the new clusters to the old persons by shared faces; `incremental` only files the new faces
//! under the existing persons).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use facegroup_core::group::{assign_new_faces, group_faces, FaceInput, GroupConfig, Groups};

use crate::engine::ImageResult;
use crate::output::face_id;

/// Name of the grouping result in the output folder.
pub const GROUPS_FILE: &str = "groups.json";

/// How `facegroup run` groups faces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GroupMode {
    /// Re-cluster all faces; persons of a previous run in the same folder keep their ids.
    Full,
    /// Add new faces to the persons of the previous run without re-clustering (falls back to
    /// `full` when there is no previous run).
    Incremental,
    /// Do not group.
    Off,
}

/// Groups the faces of `results` (named `names`), using `out_dir/groups.json` of an earlier
/// run as the previous grouping, and writes the new one there.
pub fn group_and_write(
    out_dir: &Path,
    names: &[String],
    results: &[ImageResult],
    mode: GroupMode,
) -> Result<Option<Groups>> {
    if mode == GroupMode::Off {
        return Ok(None);
    }
    let faces = face_inputs(names, results);
    let path = out_dir.join(GROUPS_FILE);
    let previous = read_previous(&path)?;
    let cfg = GroupConfig::default();
    let groups = match (mode, &previous) {
        (GroupMode::Incremental, Some(prev)) => assign_new_faces(&faces, prev, &cfg),
        _ => group_faces(&faces, &cfg, previous.as_ref()),
    }
    .context("grouping faces")?;
    let json = serde_json::to_vec_pretty(&groups).context("serialising groups")?;
    std::fs::write(&path, json).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(Some(groups))
}

/// face id -> person id, for the face records.
pub fn person_of(groups: Option<&Groups>) -> HashMap<String, String> {
    groups
        .map(|g| {
            g.persons
                .iter()
                .flat_map(|p| p.face_ids.iter().map(|f| (f.clone(), p.person_id.clone())))
                .collect()
        })
        .unwrap_or_default()
}

fn face_inputs(names: &[String], results: &[ImageResult]) -> Vec<FaceInput> {
    names
        .iter()
        .zip(results)
        .filter_map(|(name, r)| r.outcome.as_ref().ok().map(|a| (name, a)))
        .flat_map(|(name, analyzed)| {
            analyzed.faces.iter().map(move |face| FaceInput {
                face_id: face_id(name, face.index),
                image_id: name.clone(),
                embedding: face.embedding.clone(),
                quality_ok: face.quality.passes(),
                quality: face.quality.overall,
            })
        })
        .collect()
}

/// The previous run's groups; a missing file means a first run, an unreadable one is an error
/// rather than a silent loss of every person id.
fn read_previous(path: &Path) -> Result<Option<Groups>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).with_context(|| {
            format!(
                "{} is not a groups file (delete it to start over)",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}
