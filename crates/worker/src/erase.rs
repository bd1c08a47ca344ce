//! Erasing one image's data everywhere the detection worker put it: the status document
//! becomes a tombstone, the face thumbnails of every model version (the image's whole
//! thumbnail folder, `crate::thumbs`), the faces (with their embeddings) and the image's count
//! on the gallery's grouping trigger are deleted, and so is its result JSON.
//!
//! Shared by the grouping worker's deletion jobs and by a detection job that finds its image
//! deleted (before it starts or after its writes): the tombstone is written first, so a
//! detection job racing the erasure either sees it at its last write and erases what it wrote
//! itself, or finished all its writes before the tombstone, and then the erasure after the
//! tombstone removes them. Every step is idempotent.

use crate::error::StoreError;
use crate::mongo::MongoStore;
use crate::s3::S3Store;
use crate::thumbs;

/// The per-image result JSON's key: `{prefix}{gallery}/{image}.json`.
pub fn result_key(prefix: &str, gallery_id: &str, image_id: &str) -> String {
    format!("{prefix}{gallery_id}/{image_id}.json")
}

/// Where the detection worker writes an image's S3 data: the results and thumbnail prefixes.
#[derive(Debug, Clone, Copy)]
pub struct Prefixes<'a> {
    pub results: &'a str,
    pub thumbnails: &'a str,
}

/// Erases the image (see the module docs); returns how many faces were deleted.
pub async fn erase_image(
    mongo: &MongoStore,
    s3: &S3Store,
    prefixes: Prefixes<'_>,
    gallery_id: &str,
    image_id: &str,
) -> Result<u64, StoreError> {
    let results_prefix = prefixes.results;
    mongo.tombstone_image(gallery_id, image_id).await?;
    s3.delete_prefix(&thumbs::image_prefix(
        prefixes.thumbnails,
        gallery_id,
        image_id,
    ))
    .await?;
    let faces = mongo.delete_image_faces(gallery_id, image_id).await?;
    s3.delete_keys(&[result_key(results_prefix, gallery_id, image_id)])
        .await?;
    Ok(faces)
}
