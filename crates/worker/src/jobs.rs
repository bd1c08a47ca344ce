//! Message contracts of the two queues (README "Workers", JSON Schemas in `docs/schemas/`).
//! Unknown fields are ignored so producers can add fields first; a missing required field is a
//! permanent error (the message can never become valid).

use facegroup_core::GroupMode;
use serde::{Deserialize, Serialize};

use crate::error::JobError;

/// A detection job: find, embed and score the faces of one image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetectionJob {
    pub image_id: String,
    pub gallery_id: String,
    pub bucket: String,
    pub key: String,
    /// Opaque to the worker; stored on the image's status document for the caller.
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
    fn ids_cannot_escape_key_prefixes() {
        assert!(check_id("id", "img-1.jpg").is_ok());
        for bad in ["", "..", "a/b", "a b", "x\n"] {
            assert!(check_id("id", bad).is_err(), "{bad:?}");
        }
        assert_eq!(image_id_of(r#"{"image_id":"x1"}"#).as_deref(), Some("x1"));
        assert_eq!(image_id_of(r#"{"image_id":"../x"}"#), None);
    }
}
