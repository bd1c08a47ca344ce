//! Full or incremental: the one place that decides how a grouping run treats the persons of
//! the previous run, for the CLI and the grouping worker alike.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::{
    assign_new_faces, group_faces, Constraints, FaceInput, GroupConfig, GroupError, Groups,
};

/// How a grouping run treats existing persons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum GroupMode {
    /// File new faces under the existing persons only (cheap; a first run is full).
    Incremental,
    /// Re-cluster every face; persons that continue keep their ids.
    Full,
}

impl GroupMode {
    /// The mode a run really has: incremental needs persons to add faces to, so without a
    /// previous run it is full.
    pub fn effective(self, has_previous: bool) -> GroupMode {
        match (self, has_previous) {
            (GroupMode::Incremental, false) => GroupMode::Full,
            (mode, _) => mode,
        }
    }

    /// The stronger of two requested modes (a full request covers an incremental one).
    pub fn max(self, other: GroupMode) -> GroupMode {
        if self == GroupMode::Full || other == GroupMode::Full {
            GroupMode::Full
        } else {
            GroupMode::Incremental
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            GroupMode::Incremental => "incremental",
            GroupMode::Full => "full",
        }
    }
}

impl fmt::Display for GroupMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for GroupMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "incremental" => Ok(GroupMode::Incremental),
            "full" => Ok(GroupMode::Full),
            _ => Err(format!(
                "unknown grouping mode {s:?} (expected full or incremental)"
            )),
        }
    }
}

/// Groups `faces` in `mode` against the `previous` run under the user's `constraints`;
/// returns the groups and the mode that was really used ([`GroupMode::effective`]).
pub fn regroup(
    faces: &[FaceInput],
    cfg: &GroupConfig,
    mode: GroupMode,
    previous: Option<&Groups>,
    constraints: Option<&Constraints>,
) -> Result<(Groups, GroupMode), GroupError> {
    let mode = mode.effective(previous.is_some());
    let groups = match (mode, previous) {
        (GroupMode::Incremental, Some(prev)) => assign_new_faces(faces, prev, cfg, constraints)?,
        (_, prev) => group_faces(faces, cfg, prev, constraints)?,
    };
    Ok((groups, mode))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incremental_without_previous_is_full() {
        assert_eq!(GroupMode::Incremental.effective(false), GroupMode::Full);
        assert_eq!(
            GroupMode::Incremental.effective(true),
            GroupMode::Incremental
        );
        assert_eq!(GroupMode::Full.effective(true), GroupMode::Full);
        assert_eq!(GroupMode::Incremental.max(GroupMode::Full), GroupMode::Full);
        assert_eq!("full".parse::<GroupMode>(), Ok(GroupMode::Full));
        assert!("partial".parse::<GroupMode>().is_err());
    }
}
