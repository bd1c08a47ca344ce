//! Grouping step of `facegroup run`: the stored faces -> persons, against the stored grouping of
//! the previous run so persons keep their ids.
//!
//! `--group-mode full` re-clusters everything and matches the new clusters to the old persons
//! by shared faces; `incremental` only files the new faces under the existing persons
//! (`facegroup_core::regroup` decides, as in the grouping worker). Without a flag the run picks:
//! nothing changed -> the grouping is kept as it is; a first run or a large change -> full; a
//! small change (at most [`INCREMENTAL_SHARE`] of the photos) -> incremental.

use std::collections::HashSet;

use anyhow::{Context, Result};
use facegroup_core::group::{regroup, Corrections, FaceInput, GroupConfig, GroupMode, Groups};
use facegroup_core::FaceRecord;

/// The largest share of changed photos that is still grouped incrementally by default.
pub const INCREMENTAL_SHARE: f64 = 0.1;

/// What changed since the stored grouping.
#[derive(Debug, Clone, Copy)]
pub struct Change {
    /// Photos analysed this run (new or changed).
    pub analysed: usize,
    /// Photos forgotten this run.
    pub removed: usize,
    /// Photos in the store after this run.
    pub total: usize,
}

/// The mode to group in, or `None` to keep the stored grouping unchanged.
pub fn choose_mode(
    requested: Option<GroupMode>,
    has_previous: bool,
    change: Change,
) -> Option<GroupMode> {
    if let Some(mode) = requested {
        return Some(mode.effective(has_previous));
    }
    if !has_previous {
        return Some(GroupMode::Full);
    }
    let changed = change.analysed + change.removed;
    if changed == 0 {
        return None;
    }
    let share = changed as f64 / change.total.max(1) as f64;
    Some(if share <= INCREMENTAL_SHARE {
        GroupMode::Incremental
    } else {
        GroupMode::Full
    })
}

/// Groups `faces` in `mode`. `previous` is the stored grouping; faces of the photos in `stale`
/// (re-analysed this run) and faces no longer stored are taken out of it first, so they are
/// grouped afresh instead of keeping the person of a face that no longer exists.
pub fn group(
    faces: &[FaceRecord],
    previous: Option<Groups>,
    stale: &HashSet<String>,
    mode: GroupMode,
    corrections: &Corrections,
) -> Result<(Groups, GroupMode)> {
    let inputs: Vec<FaceInput> = faces.iter().map(FaceRecord::group_input).collect();
    let keep: HashSet<&str> = faces
        .iter()
        .filter(|f| !stale.contains(&f.image_id))
        .map(|f| f.face_id.as_str())
        .collect();
    let previous = previous.map(|p| prune(p, &keep));
    let constraints = corrections.constraints();
    let (mut groups, used) = regroup(
        &inputs,
        &GroupConfig::default(),
        mode,
        previous.as_ref(),
        (!constraints.is_empty()).then_some(&constraints),
    )
    .context("grouping faces")?;
    corrections.label(&mut groups);
    Ok((groups, used))
}

/// `groups` restricted to the faces in `keep`; persons left without faces are dropped, and one
/// that lost its representative shows its first remaining face.
pub fn prune(mut groups: Groups, keep: &HashSet<&str>) -> Groups {
    groups.unassigned.retain(|f| keep.contains(f.as_str()));
    for person in &mut groups.persons {
        person.face_ids.retain(|f| keep.contains(f.as_str()));
        if !keep.contains(person.representative.as_str()) {
            if let Some(first) = person.face_ids.first() {
                person.representative = first.clone();
            }
        }
    }
    groups.persons.retain(|p| !p.face_ids.is_empty());
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use facegroup_core::group::Person;

    fn change(analysed: usize, removed: usize, total: usize) -> Change {
        Change {
            analysed,
            removed,
            total,
        }
    }

    #[test]
    fn mode_follows_the_size_of_the_change() {
        assert_eq!(
            choose_mode(None, false, change(5, 0, 5)),
            Some(GroupMode::Full)
        );
        assert_eq!(choose_mode(None, true, change(0, 0, 100)), None);
        assert_eq!(
            choose_mode(None, true, change(5, 5, 100)),
            Some(GroupMode::Incremental)
        );
        assert_eq!(
            choose_mode(None, true, change(11, 0, 100)),
            Some(GroupMode::Full)
        );
        assert_eq!(
            choose_mode(Some(GroupMode::Full), true, change(0, 0, 100)),
            Some(GroupMode::Full)
        );
        assert_eq!(
            choose_mode(Some(GroupMode::Incremental), false, change(1, 0, 1)),
            Some(GroupMode::Full)
        );
    }

    #[test]
    fn prune_drops_gone_faces_and_empty_persons() {
        let groups = Groups {
            persons: vec![
                Person {
                    person_id: "person-1".into(),
                    face_ids: vec!["a".into(), "b".into()],
                    representative: "a".into(),
                    name: None,
                },
                Person {
                    person_id: "person-2".into(),
                    face_ids: vec!["c".into()],
                    representative: "c".into(),
                    name: None,
                },
            ],
            unassigned: vec!["d".into(), "e".into()],
        };
        let keep: HashSet<&str> = ["b", "e"].into_iter().collect();
        let pruned = prune(groups, &keep);
        assert_eq!(pruned.persons.len(), 1);
        assert_eq!(pruned.persons[0].face_ids, ["b"]);
        assert_eq!(pruned.persons[0].representative, "b");
        assert_eq!(pruned.unassigned, ["e"]);
    }
}
