//! Face thumbnails in S3: where they live, how they are written and how they are erased.
//!
//! One definition of the key format, derived from the face id alone, so every writer and eraser
//! (the detection worker, the deletion jobs, the grouping run that names a person's
//! representative) agrees on it without a lookup:
//! `{prefix}{gallery}/{image}/{model_version}/{index}.aligned.jpg` and `...context.jpg` for
//! face id `{gallery}/{image}:{model_version}:{index}` ([`facegroup_core::face_id`] of the
//! gallery-scoped image key). All of an image's thumbnails (every model version) share the
//! folder [`image_prefix`], all of a gallery's [`gallery_prefix`], which is what the deletions
//! erase: listing the folder also finds thumbnails of an attempt that died before it stored its
//! faces, which no face document names.
//!
//! Thumbnails are biometric data (docs/security.md): they are written before the faces that
//! name them are committed, so a stored face never points at a missing thumbnail, and a PUT of
//! the same key with the same bytes makes a redelivered job idempotent.

use facegroup_core::Thumbnails;
use futures::{StreamExt, TryStreamExt};

use crate::error::StoreError;
use crate::s3::S3Store;

/// Default key prefix of the thumbnails (`FACEGROUP_THUMBNAILS_PREFIX`).
pub const DEFAULT_PREFIX: &str = "thumbnails/";

/// PUTs in flight at once while a job stores its faces' thumbnails.
const PUT_CONCURRENCY: usize = 8;

/// The S3 keys of one face's two thumbnails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThumbnailKeys {
    /// The aligned 112x112 crop the embedding came from.
    pub aligned: String,
    /// The face with its surroundings (`facegroup_core::thumbnail::context_crop`).
    pub context: String,
}

/// The keys of face `face_id`'s thumbnails (module docs); `None` for an id not in the
/// `{gallery}/{image}:{model_version}:{index}` shape.
pub fn keys(prefix: &str, face_id: &str) -> Option<ThumbnailKeys> {
    let mut parts = face_id.rsplitn(3, ':');
    let (index, model, image) = (parts.next()?, parts.next()?, parts.next()?);
    if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) || model.is_empty() {
        return None;
    }
    let (gallery, image_id) = image.split_once('/')?;
    let base = format!("{}{model}/{index}", image_prefix(prefix, gallery, image_id));
    Some(ThumbnailKeys {
        aligned: format!("{base}.aligned.jpg"),
        context: format!("{base}.context.jpg"),
    })
}

/// The folder of every thumbnail of an image: `{prefix}{gallery}/{image}/`.
pub fn image_prefix(prefix: &str, gallery_id: &str, image_id: &str) -> String {
    format!("{prefix}{gallery_id}/{image_id}/")
}

/// The folder of every thumbnail of a gallery: `{prefix}{gallery}/`.
pub fn gallery_prefix(prefix: &str, gallery_id: &str) -> String {
    format!("{prefix}{gallery_id}/")
}

/// Writes each face's thumbnails under its keys (`faces` pairs a face id with its JPEGs) and
/// returns the keys in the same order. Faces whose id has no keys are an error: the caller
/// made the ids, so that is a bug, not input.
pub async fn put(
    s3: &S3Store,
    prefix: &str,
    faces: &[(&str, &Thumbnails)],
) -> Result<Vec<ThumbnailKeys>, StoreError> {
    let keyed = faces
        .iter()
        .map(|(id, t)| {
            keys(prefix, id)
                .map(|k| (k, *t))
                .ok_or_else(|| StoreError::Malformed(format!("face id {id:?} names no thumbnail")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    // Owned requests (a cloned client each): the job's future must be `Send`, which borrowed
    // stream items defeat (rust-lang/rust#102211).
    let puts: Vec<(S3Store, String, Vec<u8>)> = keyed
        .iter()
        .flat_map(|(k, t)| {
            [
                (s3.clone(), k.aligned.clone(), t.aligned.clone()),
                (s3.clone(), k.context.clone(), t.context.clone()),
            ]
        })
        .collect();
    futures::stream::iter(puts)
        .map(|(s3, key, body)| async move { s3.put_bytes(&key, body, "image/jpeg").await })
        .buffer_unordered(PUT_CONCURRENCY)
        .try_collect::<()>()
        .await?;
    Ok(keyed.into_iter().map(|(k, _)| k).collect())
}

/// Deletes the thumbnails of `face_ids` (ids without keys are skipped).
pub async fn delete_faces(
    s3: &S3Store,
    prefix: &str,
    face_ids: &[String],
) -> Result<(), StoreError> {
    let keys: Vec<String> = face_ids
        .iter()
        .filter_map(|id| keys(prefix, id))
        .flat_map(|k| [k.aligned, k.context])
        .collect();
    s3.delete_keys(&keys).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_face_id() {
        let id = facegroup_core::face_id("g-1/img.7", "scrfd+w600k", 3);
        let k = keys("thumbnails/", &id).expect("keys");
        assert_eq!(k.aligned, "thumbnails/g-1/img.7/scrfd+w600k/3.aligned.jpg");
        assert_eq!(k.context, "thumbnails/g-1/img.7/scrfd+w600k/3.context.jpg");
        assert!(k
            .aligned
            .starts_with(&image_prefix("thumbnails/", "g-1", "img.7")));
        assert!(k.aligned.starts_with(&gallery_prefix("thumbnails/", "g-1")));
        // Not a gallery-scoped face id, or no index: no keys.
        assert_eq!(keys("t/", "img:m:1"), None);
        assert_eq!(keys("t/", "g/img:m:x"), None);
        assert_eq!(keys("t/", "g/img"), None);
    }
}
