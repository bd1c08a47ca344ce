//! Grouping step of `facegroup run`: all analysed faces -> persons, written to `groups.json`.
//!
//! Re-running into the same output folder reads the previous `groups.json` first, so persons
//! keep their ids when photos are added (`--group-mode full` re-clusters everything and matches
//! the new clusters to the old persons by shared faces; `incremental` only files the new faces
//! under the existing persons; `facegroup_core::regroup` decides, as in the grouping worker).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use facegroup_core::group::{regroup, FaceInput, GroupConfig, GroupMode, Groups};
use facegroup_core::FaceRecord;

use crate::engine::ImageResult;

/// Name of the grouping result in the output folder.
pub const GROUPS_FILE: &str = "groups.json";

/// Groups the faces of `results` (named `names`), using `out_dir/groups.json` of an earlier
/// run as the previous grouping, and writes the new one there.
pub fn group_and_write(
    out_dir: &Path,
    model_version: &str,
    names: &[String],
    results: &[ImageResult],
    mode: GroupMode,
) -> Result<Groups> {
    let faces = face_inputs(model_version, names, results);
    let path = out_dir.join(GROUPS_FILE);
    let previous = read_previous(&path)?;
    let (groups, _) = regroup(&faces, &GroupConfig::default(), mode, previous.as_ref())
        .context("grouping faces")?;
    let json = serde_json::to_vec_pretty(&groups).context("serialising groups")?;
    std::fs::write(&path, json).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(groups)
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

fn face_inputs(model_version: &str, names: &[String], results: &[ImageResult]) -> Vec<FaceInput> {
    names
        .iter()
        .zip(results)
        .filter_map(|(name, r)| r.outcome.as_ref().ok().map(|a| (name, a)))
        .flat_map(|(name, analyzed)| {
            analyzed
                .faces
                .iter()
                .map(move |face| FaceRecord::new(name, model_version, face).group_input())
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
