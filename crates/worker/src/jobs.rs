//! Message contracts of the two queues (README "Workers", JSON Schemas in `docs/schemas/`).
//! Unknown fields are ignored so producers can add fields first; a missing required field is a
//! permanent error (the message can never become valid).
//!
//! The grouping queue carries two kinds of message: grouping jobs and deletion jobs
//! (`"type": "delete"`, [`DeletionJob`]). Deletions go there because the grouping worker holds
//! the gallery's lease while it works, which orders a deletion against every grouping run of
//! the gallery (see the grouping worker's `deletion` module for the race rule with detection).

use facegroup_core::{Correction, GroupMode};
use serde::{Deserialize, Serialize};

use crate::error::JobError;

/// A detection job: find, embed and score the faces of one image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetectionJob {
    pub image_id: String,
    pub gallery_id: String,
    pub bucket: String,
    pub key: String,
    /// URL POSTed the image's `image.done` / `image.failed` event (`crate::events`; only hosts
    /// on the allow-list); also stored on the image's status document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback: Option<String>,
    /// Free-form caller metadata, stored on the image's status document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
}

/// A grouping job: group a gallery's faces into persons.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupingJob {
    pub gallery_id: String,
    /// How existing persons are treated (`facegroup_core::GroupMode`, `full` or `incremental`).
    pub mode: GroupMode,
    /// Overrides the configured minimum face quality for this run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_quality: Option<f32>,
    /// URL POSTed the run's `gallery.grouped` event (`crate::events`). A request coalesced into
    /// a running job gets no event of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback: Option<String>,
}

/// A deletion job (`docs/schemas/deletion-job.schema.json`): erase an image, a whole gallery or
/// a person of a gallery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeletionJob {
    /// Always `delete`: what tells a deletion from a grouping job on the grouping queue.
    #[serde(rename = "type")]
    pub kind: DeleteTag,
    pub gallery_id: String,
    #[serde(flatten)]
    pub scope: DeletionScope,
}

/// The `type` of a [`DeletionJob`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeleteTag {
    Delete,
}

/// What a [`DeletionJob`] erases (`scope` in the message).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "scope", rename_all = "lowercase")]
pub enum DeletionScope {
    /// One image: its status (left as a tombstone), faces, embeddings, result JSON and its
    /// faces in the committed grouping.
    Image { image_id: String },
    /// The whole gallery: every image as above, the grouping runs and the grouping state.
    Gallery,
    /// A person of the committed grouping. `faces: true` erases its faces everywhere;
    /// `faces: false` only dissolves the person (its faces become unassigned). Either way its
    /// id is retired.
    Person { person_id: String, faces: bool },
}

/// A correction job (`docs/schemas/correction-job.schema.json`): a user's correction of a
/// gallery's persons (`facegroup_core::Correction`, its `action` and fields inline).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorrectionJob {
    /// Always `correction`.
    #[serde(rename = "type")]
    pub kind: CorrectionTag,
    pub gallery_id: String,
    #[serde(flatten)]
    pub correction: Correction,
}

/// The `type` of a [`CorrectionJob`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CorrectionTag {
    Correction,
}

/// A message of the grouping queue.
#[derive(Debug, Clone, PartialEq)]
pub enum GroupingQueueJob {
    Group(GroupingJob),
    Delete(DeletionJob),
    Correct(CorrectionJob),
}

/// Parses a grouping-queue body by its `type`: `delete`, `correction`, or none for a grouping
/// job.
pub fn parse_grouping_queue(body: &str) -> Result<GroupingQueueJob, JobError> {
    let v: serde_json::Value = parse(body)?;
    match v.get("type").map(|t| t.as_str()) {
        None => Ok(GroupingQueueJob::Group(parse(body)?)),
        Some(Some("delete")) => {
            let job: DeletionJob = serde_json::from_value(v)
                .map_err(|e| JobError::permanent(format!("invalid deletion job: {e}")))?;
            check_id("gallery_id", &job.gallery_id)?;
            match &job.scope {
                DeletionScope::Image { image_id } => check_id("image_id", image_id)?,
                DeletionScope::Person { person_id, .. } => check_id("person_id", person_id)?,
                DeletionScope::Gallery => {}
            }
            Ok(GroupingQueueJob::Delete(job))
        }
        Some(Some("correction")) => {
            let job: CorrectionJob = serde_json::from_value(v)
                .map_err(|e| JobError::permanent(format!("invalid correction job: {e}")))?;
            check_id("gallery_id", &job.gallery_id)?;
            Ok(GroupingQueueJob::Correct(job))
        }
        Some(other) => Err(JobError::permanent(format!(
            "unknown grouping-queue message type {other:?}"
        ))),
    }
}

/// Parses a message body; any error is permanent.
pub fn parse<T: serde::de::DeserializeOwned>(body: &str) -> Result<T, JobError> {
    let job: T = serde_json::from_str(body)
        .map_err(|e| JobError::permanent(format!("invalid message: {e}")))?;
    Ok(job)
}

/// Ids must be usable as S3 key parts and MongoDB ids: non-empty, no path tricks.
pub fn check_id(what: &str, id: &str) -> Result<(), JobError> {
    let ok = !id.is_empty()
        && id.len() <= 256
        && id != "."
        && id != ".."
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@' | '+' | '='));
    if ok {
        Ok(())
    } else {
        Err(JobError::permanent(format!("invalid {what} {id:?}")))
    }
}

/// The image id of a body that may not parse as a whole job, so a failure can still be
/// recorded on the image.
pub fn image_id_of(body: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    let id = v.get("image_id")?.as_str()?;
    check_id("image id", id).ok()?;
    Some(id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorClass;

    #[test]
    fn unknown_fields_ignored_missing_fields_permanent() {
        let j: DetectionJob =
            parse(r#"{"image_id":"i1","gallery_id":"g","bucket":"b","key":"k.jpg","extra":1}"#)
                .expect("valid");
        assert_eq!(j.image_id, "i1");
        assert_eq!(j.callback, None);
        let e = parse::<DetectionJob>(r#"{"image_id":"i1","gallery_id":"g","bucket":"b"}"#)
            .expect_err("key missing");
        assert_eq!(e.class, ErrorClass::Permanent);
        assert!(e.reason.contains("key"), "{}", e.reason);
        let e = parse::<DetectionJob>("not json").expect_err("garbage");
        assert_eq!(e.class, ErrorClass::Permanent);
    }

    #[test]
    fn grouping_mode_is_checked() {
        let j: GroupingJob = parse(r#"{"gallery_id":"g","mode":"full"}"#).expect("valid");
        assert_eq!(j.mode, GroupMode::Full);
        assert!(parse::<GroupingJob>(r#"{"gallery_id":"g","mode":"partial"}"#).is_err());
        assert!(parse::<GroupingJob>(r#"{"gallery_id":"g"}"#).is_err());
    }

    #[test]
    fn deletion_jobs_are_told_from_grouping_jobs() {
        let d = |body: &str| match parse_grouping_queue(body) {
            Ok(GroupingQueueJob::Delete(d)) => Ok(d.scope),
            Ok(other) => panic!("not a deletion: {other:?}"),
            Err(e) => Err(e.class),
        };
        assert_eq!(
            d(r#"{"type":"delete","scope":"image","gallery_id":"g","image_id":"i.jpg"}"#),
            Ok(DeletionScope::Image {
                image_id: "i.jpg".into()
            })
        );
        assert_eq!(
            d(r#"{"type":"delete","scope":"gallery","gallery_id":"g"}"#),
            Ok(DeletionScope::Gallery)
        );
        assert_eq!(
            d(
                r#"{"type":"delete","scope":"person","gallery_id":"g","person_id":"person-3","faces":false}"#
            ),
            Ok(DeletionScope::Person {
                person_id: "person-3".into(),
                faces: false
            })
        );
        for bad in [
            r#"{"type":"delete","scope":"image","gallery_id":"g"}"#,
            r#"{"type":"delete","scope":"person","gallery_id":"g","person_id":"p"}"#,
            r#"{"type":"delete","scope":"image","gallery_id":"g","image_id":"../x"}"#,
            r#"{"type":"delete","scope":"everything","gallery_id":"g"}"#,
            r#"{"type":"purge","scope":"gallery","gallery_id":"g"}"#,
        ] {
            assert_eq!(d(bad), Err(ErrorClass::Permanent), "{bad}");
        }
        assert!(matches!(
            parse_grouping_queue(r#"{"gallery_id":"g","mode":"full"}"#),
            Ok(GroupingQueueJob::Group(_))
        ));
    }

    #[test]
    fn ids_cannot_escape_key_prefixes() {
        assert!(check_id("id", "img-1.jpg").is_ok());
        for bad in ["", "..", "a/b", "a b", "x\n"] {
            assert!(check_id("id", bad).is_err(), "{bad:?}");
        }
        assert_eq!(image_id_of(r#"{"image_id":"x1"}"#).as_deref(), Some("x1"));
        assert_eq!(image_id_of(r#"{"image_id":"../x"}"#), None);
    }

    #[test]
    fn correction_jobs_carry_the_core_correction() {
        let c = |body: &str| match parse_grouping_queue(body) {
            Ok(GroupingQueueJob::Correct(c)) => Ok(c.correction),
            Ok(other) => panic!("not a correction: {other:?}"),
            Err(e) => Err(e.class),
        };
        assert_eq!(
            c(
                r#"{"type":"correction","gallery_id":"g","action":"merge","into":"person-1","from":["person-2"]}"#
            ),
            Ok(Correction::Merge {
                into: "person-1".into(),
                from: vec!["person-2".into()]
            })
        );
        assert_eq!(
            c(
                r#"{"type":"correction","gallery_id":"g","action":"name","person_id":"person-1","name":"Ana"}"#
            ),
            Ok(Correction::Name {
                person_id: "person-1".into(),
                name: "Ana".into()
            })
        );
        for bad in [
            r#"{"type":"correction","gallery_id":"g","action":"merge","into":"person-1"}"#,
            r#"{"type":"correction","gallery_id":"g","action":"forget","face_id":"f"}"#,
            r#"{"type":"correction","gallery_id":"../g","action":"split","face_id":"f"}"#,
        ] {
            assert_eq!(c(bad), Err(ErrorClass::Permanent), "{bad}");
        }
    }
}
