//! MongoDB store. Two databases, as in the original system:
//! - `gallery_images.faces`: one document per detected face, keyed by (image id, face index,
//!   model version) both as a unique index and as a deterministic `_id`, so every write is an
//!   idempotent upsert and a redelivered message can never duplicate faces;
//! - `huemn.images`: one document per image, `_id` = [`image_key`] (`{gallery_id}/{image_id}`:
//!   image ids are the caller's and only unique within a gallery), with its processing status
//!   (pending, done with a face count and model version, failed with class and reason),
//!   timestamps and attempts;
//! - `huemn.galleries`: the per-gallery grouping trigger. Each done image *sets* its face count
//!   under its own name (`new_faces.{image}`), so a rerun after a crash rewrites the same value
//!   instead of counting twice, and the sum decides when to enqueue a grouping job. The pending
//!   mark carries an expiry and the image that claimed it: a crash between the claim and the
//!   send is completed by that image's redelivery, or by any later detection once it expires.
//!
//! # Tombstones
//!
//! A deleted image's status document is replaced by a tombstone, `{_id, gallery_id, status:
//! "deleted", deleted_at}` (no bucket, key, callback or metadata), and a deleted gallery's
//! document carries `deleted_at`. Tombstones are never overwritten: [`MongoStore::begin`] reports
//! [`Begin::Deleted`] instead of starting, and the status writes of a detection job
//! ([`MongoStore::begin`], [`MongoStore::mark_done`], [`MongoStore::mark_failed`]) only match a
//! document that is not a tombstone, so a late or racing job can never turn a deleted image
//! back into a live one (the race rule is in the grouping worker's `deletion` module).

use futures::TryStreamExt;
use mongodb::bson::{self, doc, spec::BinarySubtype, Binary, Bson, DateTime, Document};
use mongodb::options::{IndexOptions, ReturnDocument};
use mongodb::{Client, Collection, IndexModel};
use serde::{Deserialize, Serialize};

use facegroup_core::{FaceInput, FaceRecord, Groups};

use crate::error::StoreError;
use crate::thumbs::ThumbnailKeys;

pub const FACES_DB: &str = "gallery_images";
pub const FACES_COLLECTION: &str = "faces";
pub const STATUS_DB: &str = "huemn";
pub const IMAGES_COLLECTION: &str = "images";
pub const GALLERIES_COLLECTION: &str = "galleries";
/// Most face ids in one `$in` of [`MongoStore::set_person_ids`] (5,000 ids of ~60 bytes stay far
/// under the 16 MiB BSON limit).
pub const PERSON_ID_CHUNK: usize = 5_000;

/// Processing status of an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pending,
    Done,
    Failed,
}

/// Where an image comes from, recorded when its job starts.
#[derive(Debug, Clone)]
pub struct ImageRef<'a> {
    pub image_id: &'a str,
    pub gallery_id: &'a str,
    pub bucket: &'a str,
    pub key: &'a str,
    pub callback: Option<&'a str>,
    pub metadata: Option<&'a serde_json::Value>,
}

/// Handle on both databases.
#[derive(Clone)]
pub struct MongoStore {
    faces: Collection<Document>,
    images: Collection<Document>,
    galleries: Collection<Document>,
}

/// The `_id` of an image's status document, and its name within the gallery's grouping
/// trigger: ids are checked to hold no `/` (see `jobs::check_id`), so the key is unambiguous.
pub fn image_key(gallery_id: &str, image_id: &str) -> String {
    format!("{gallery_id}/{image_id}")
}

/// What [`MongoStore::begin`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Begin {
    /// The job should run (status now pending, one more attempt recorded).
    Run,
    /// The image is already done from the same object with the same model version: a
    /// duplicate delivery, to acknowledge without redoing or touching the status.
    AlreadyDone,
    /// The image or its gallery was deleted (a tombstone): the job must be dropped.
    Deleted,
}

/// The status of a tombstone.
pub const DELETED: &str = "deleted";

impl MongoStore {
    /// Connects (lazily: the driver connects on first use) and returns the store.
    pub async fn connect(uri: &str) -> Result<Self, StoreError> {
        let client = Client::with_uri_str(uri).await?;
        Ok(Self::from_client(&client))
    }

    pub fn from_client(client: &Client) -> Self {
        let status = client.database(STATUS_DB);
        Self {
            faces: client.database(FACES_DB).collection(FACES_COLLECTION),
            images: status.collection(IMAGES_COLLECTION),
            galleries: status.collection(GALLERIES_COLLECTION),
        }
    }

    pub fn faces(&self) -> &Collection<Document> {
        &self.faces
    }

    pub fn images(&self) -> &Collection<Document> {
        &self.images
    }

    pub fn galleries(&self) -> &Collection<Document> {
        &self.galleries
    }

    /// Creates the indexes the upserts and queries rely on (idempotent).
    pub async fn ensure_indexes(&self) -> Result<(), StoreError> {
        let unique = IndexOptions::builder()
            .unique(true)
            .name("image_face_model".to_string())
            .build();
        self.faces
            .create_index(
                IndexModel::builder()
                    .keys(doc! {"image_id": 1, "face_index": 1, "model_version": 1})
                    .options(unique)
                    .build(),
            )
            .await?;
        // Its prefix serves `gallery_faces`; `person_run` lets `new_faces` find the faces no
        // run has written without scanning the gallery.
        self.faces
            .create_index(
                IndexModel::builder()
                    .keys(doc! {"gallery_id": 1, "model_version": 1, "person_run": 1})
                    .build(),
            )
            .await?;
        self.images
            .create_index(
                IndexModel::builder()
                    .keys(doc! {"gallery_id": 1, "status": 1})
                    .build(),
            )
            .await?;
        crate::corrections::CorrectionStore::new(self)
            .ensure_indexes()
            .await?;
        Ok(())
    }

    /// Starts a job for the image: a duplicate of a finished one ([`Begin::AlreadyDone`]: done,
    /// same bucket, key and model version) is left untouched; otherwise the status becomes
    /// pending with one more attempt.
    pub async fn begin(
        &self,
        img: &ImageRef<'_>,
        model_version: &str,
    ) -> Result<Begin, StoreError> {
        if self.is_deleted(img.gallery_id, img.image_id).await? {
            return Ok(Begin::Deleted);
        }
        let key = image_key(img.gallery_id, img.image_id);
        let done_same = doc! {
            "_id": &key, "status": "done", "model_version": model_version,
            "bucket": img.bucket, "key": img.key,
        };
        if self.images.find_one(done_same).await?.is_some() {
            return Ok(Begin::AlreadyDone);
        }
        let now = DateTime::now();
        let mut set = doc! {
            "image_id": img.image_id,
            "gallery_id": img.gallery_id,
            "bucket": img.bucket,
            "key": img.key,
            "status": "pending",
            "started_at": now,
            "updated_at": now,
        };
        if let Some(cb) = img.callback {
            set.insert("callback", cb);
        }
        if let Some(meta) = img.metadata {
            let meta = bson::to_bson(meta).map_err(|e| StoreError::Malformed(e.to_string()))?;
            set.insert("metadata", meta);
        }
        // Never over a tombstone: one written since the check above makes the upsert collide
        // with it on `_id`.
        let started = self
            .images
            .update_one(
                doc! {"_id": &key, "status": {"$ne": DELETED}},
                doc! {
                    "$set": set,
                    "$inc": {"attempts": 1},
                    "$setOnInsert": {"created_at": now},
                    "$unset": {"failure": "", "face_count": "", "completed_at": ""},
                },
            )
            .upsert(true)
            .await;
        match started {
            Ok(_) => Ok(Begin::Run),
            Err(e) if is_duplicate_key(&e) => Ok(Begin::Deleted),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes an image's faces (all of one image and model version): one upsert per face, then
    /// removes faces with a higher index left by an earlier attempt, so the stored set equals
    /// `faces` however often this runs. `thumbnails` (when given, one per face, in order) are
    /// the keys of the faces' thumbnails, already in S3: stored as `thumbnail_key` (aligned
    /// crop) and `context_key`.
    pub async fn replace_faces(
        &self,
        image_id: &str,
        gallery_id: &str,
        model_version: &str,
        faces: &[FaceRecord],
        thumbnails: Option<&[ThumbnailKeys]>,
    ) -> Result<(), StoreError> {
        if thumbnails.is_some_and(|t| t.len() != faces.len()) {
            return Err(StoreError::Malformed(format!(
                "image {image_id}: thumbnail keys do not match its {} faces",
                faces.len()
            )));
        }
        let now = DateTime::now();
        for (i, f) in faces.iter().enumerate() {
            let mut set = face_document(f)?;
            set.insert("gallery_id", gallery_id);
            set.insert("updated_at", now);
            if let Some(t) = thumbnails.and_then(|t| t.get(i)) {
                set.insert("thumbnail_key", &t.aligned);
                set.insert("context_key", &t.context);
            }
            self.faces
                .update_one(
                    doc! {"_id": &f.face_id},
                    doc! {"$set": set, "$setOnInsert": {"created_at": now}},
                )
                .upsert(true)
                .await?;
        }
        self.faces
            .delete_many(doc! {
                "image_id": image_id,
                "model_version": model_version,
                "face_index": {"$gte": faces.len() as i32},
            })
            .await?;
        Ok(())
    }

    /// Marks the image done with its face count and the model version that found them (what
    /// [`begin`](Self::begin) compares a duplicate delivery with). `Ok(false)`: the image is
    /// a tombstone (deleted while the job ran) and was left alone.
    pub async fn mark_done(
        &self,
        gallery_id: &str,
        image_id: &str,
        face_count: usize,
        model_version: &str,
    ) -> Result<bool, StoreError> {
        let now = DateTime::now();
        let r = self
            .images
            .update_one(
                doc! {"_id": image_key(gallery_id, image_id), "status": {"$ne": DELETED}},
                doc! {
                    "$set": {"status": "done", "face_count": face_count as i32,
                             "model_version": model_version,
                             "updated_at": now, "completed_at": now},
                    "$unset": {"failure": ""},
                },
            )
            .await?;
        Ok(r.matched_count == 1)
    }

    /// Marks the image failed with the error class and reason (a tombstone stays as it is).
    pub async fn mark_failed(
        &self,
        gallery_id: &str,
        image_id: &str,
        class: &str,
        reason: &str,
    ) -> Result<(), StoreError> {
        let now = DateTime::now();
        let set = doc! {
            "image_id": image_id,
            "gallery_id": gallery_id,
            "status": "failed",
            "failure": {"class": class, "reason": reason},
            "updated_at": now,
        };
        let r = self
            .images
            .update_one(
                doc! {"_id": image_key(gallery_id, image_id), "status": {"$ne": DELETED}},
                doc! {"$set": set, "$setOnInsert": {"created_at": now, "attempts": 1}},
            )
            .upsert(true)
            .await;
        match r {
            Err(e) if !is_duplicate_key(&e) => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// True when the image has a tombstone or its gallery was deleted.
    pub async fn is_deleted(&self, gallery_id: &str, image_id: &str) -> Result<bool, StoreError> {
        let tomb = doc! {"_id": image_key(gallery_id, image_id), "status": DELETED};
        Ok(self.images.find_one(tomb).await?.is_some() || self.gallery_deleted(gallery_id).await?)
    }

    /// True when the gallery was deleted (its document carries `deleted_at`).
    pub async fn gallery_deleted(&self, gallery_id: &str) -> Result<bool, StoreError> {
        let tomb = doc! {"_id": gallery_id, "deleted_at": {"$exists": true}};
        Ok(self.galleries.find_one(tomb).await?.is_some())
    }

    /// Replaces the image's status document by its tombstone (see the module docs); an
    /// existing tombstone is left as it is (a redelivered deletion changes nothing).
    pub async fn tombstone_image(
        &self,
        gallery_id: &str,
        image_id: &str,
    ) -> Result<(), StoreError> {
        let key = image_key(gallery_id, image_id);
        let r = self
            .images
            .replace_one(
                doc! {"_id": &key, "status": {"$ne": DELETED}},
                doc! {"_id": &key, "gallery_id": gallery_id, "status": DELETED,
                "deleted_at": DateTime::now()},
            )
            .upsert(true)
            .await;
        match r {
            Err(e) if !is_duplicate_key(&e) => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Deletes the image's faces of every model version and its count on the gallery's
    /// grouping trigger. Returns how many faces were deleted.
    pub async fn delete_image_faces(
        &self,
        gallery_id: &str,
        image_id: &str,
    ) -> Result<u64, StoreError> {
        let deleted = self
            .faces
            .delete_many(doc! {"image_id": image_key(gallery_id, image_id)})
            .await?;
        let field = format!("new_faces.{}", trigger_field(image_id));
        self.galleries
            .update_one(doc! {"_id": gallery_id}, doc! {"$unset": {field: ""}})
            .await?;
        Ok(deleted.deleted_count)
    }

    /// The image ids of every status document of the gallery (tombstones included).
    pub async fn gallery_image_ids(&self, gallery_id: &str) -> Result<Vec<String>, StoreError> {
        let prefix = image_key(gallery_id, "");
        let mut cursor = self.images.find(doc! {"gallery_id": gallery_id}).await?;
        let mut out = Vec::new();
        while let Some(d) = cursor.try_next().await? {
            let id = d.get_str("_id").ok().and_then(|k| k.strip_prefix(&prefix));
            match id {
                Some(id) => out.push(id.to_string()),
                None => return Err(StoreError::Malformed(format!("image {:?}", d.get("_id")))),
            }
        }
        Ok(out)
    }

    /// Deletes the faces with one of `face_ids` or person id `person_id` in the gallery.
    pub async fn delete_person_faces(
        &self,
        gallery_id: &str,
        person_id: &str,
        face_ids: &[String],
    ) -> Result<u64, StoreError> {
        let mut deleted = self
            .faces
            .delete_many(doc! {"gallery_id": gallery_id, "person_id": person_id})
            .await?
            .deleted_count;
        for chunk in face_ids.chunks(PERSON_ID_CHUNK) {
            deleted += self
                .faces
                .delete_many(doc! {"gallery_id": gallery_id, "_id": {"$in": chunk}})
                .await?
                .deleted_count;
        }
        Ok(deleted)
    }

    /// The ids of the gallery's faces that carry person id `person_id`.
    pub async fn person_face_ids(
        &self,
        gallery_id: &str,
        person_id: &str,
    ) -> Result<Vec<String>, StoreError> {
        let mut cursor = self
            .faces
            .find(doc! {"gallery_id": gallery_id, "person_id": person_id})
            .projection(doc! {"_id": 1})
            .await?;
        let mut out = Vec::new();
        while let Some(d) = cursor.try_next().await? {
            match d.get_str("_id") {
                Ok(id) => out.push(id.to_string()),
                Err(_) => return Err(StoreError::Malformed(format!("face {:?}", d.get("_id")))),
            }
        }
        Ok(out)
    }

    /// Removes person id `person_id` from the gallery's faces (they become unassigned).
    pub async fn unassign_person(
        &self,
        gallery_id: &str,
        person_id: &str,
    ) -> Result<u64, StoreError> {
        let r = self
            .faces
            .update_many(
                doc! {"gallery_id": gallery_id, "person_id": person_id},
                doc! {"$unset": {"person_id": ""}},
            )
            .await?;
        Ok(r.modified_count)
    }

    /// Deletes every face of the gallery.
    pub async fn delete_gallery_faces(&self, gallery_id: &str) -> Result<u64, StoreError> {
        let r = self
            .faces
            .delete_many(doc! {"gallery_id": gallery_id})
            .await?;
        Ok(r.deleted_count)
    }

    /// Records that image `image_id` brought `new_faces` faces to the gallery, and returns true
    /// when the caller must enqueue a grouping job: the gallery's new faces reach `threshold`
    /// and no grouping job is pending (none claimed, the claim expired, or this same image
    /// claimed it on an earlier attempt that may have crashed before sending). The claim is one
    /// atomic update, so only one concurrent caller wins it; it lasts `pending_for`.
    ///
    /// Idempotent: the image's count is set under its own name, never added, so a rerun of the
    /// same image counts once.
    pub async fn add_new_faces(
        &self,
        gallery_id: &str,
        image_id: &str,
        new_faces: usize,
        threshold: usize,
        pending_for: std::time::Duration,
    ) -> Result<bool, StoreError> {
        let field = format!("new_faces.{}", trigger_field(image_id));
        let now = DateTime::now();
        let gallery = self
            .galleries
            .find_one_and_update(
                doc! {"_id": gallery_id},
                doc! {"$set": {field: new_faces as i64, "updated_at": now}},
            )
            .upsert(true)
            .return_document(ReturnDocument::After)
            .await?
            .ok_or_else(|| StoreError::Malformed(format!("gallery {gallery_id} not upserted")))?;
        let total: i64 = gallery
            .get_document("new_faces")
            .map(|d| d.values().filter_map(Bson::as_i64).sum())
            .unwrap_or(0);
        if total < threshold as i64 {
            return Ok(false);
        }
        crate::fault::crash_point("before_grouping_claim");
        let until = DateTime::from_millis(
            now.timestamp_millis()
                .saturating_add(i64::try_from(pending_for.as_millis()).unwrap_or(i64::MAX)),
        );
        let won = self
            .galleries
            .find_one_and_update(
                doc! {"_id": gallery_id, "$or": [
                    {"pending_until": {"$exists": false}},
                    {"pending_until": null},
                    {"pending_until": {"$lt": now}},
                    {"pending_by": image_id},
                ]},
                doc! {"$set": {"pending_until": until, "pending_by": image_id}},
            )
            .await?;
        Ok(won.is_some())
    }

    /// Ends the pending mark of [`add_new_faces`](Self::add_new_faces) and forgets the counted
    /// faces: a grouping job starts now (it reads every face there is), so new faces count
    /// towards the next one. Also called when the enqueue failed.
    pub async fn clear_grouping_pending(&self, gallery_id: &str) -> Result<(), StoreError> {
        self.galleries
            .update_one(
                doc! {"_id": gallery_id},
                doc! {"$set": {"new_faces": {}, "updated_at": DateTime::now()},
                "$unset": {"pending_until": "", "pending_by": ""}},
            )
            .upsert(true)
            .await?;
        Ok(())
    }

    /// The gallery's faces of one model version, ready for grouping.
    pub async fn gallery_faces(
        &self,
        gallery_id: &str,
        model_version: &str,
    ) -> Result<Vec<FaceInput>, StoreError> {
        self.group_inputs(doc! {"gallery_id": gallery_id, "model_version": model_version})
            .await
    }

    /// The gallery's faces of one model version that no grouping run has written yet (no
    /// `person_run`, see [`set_person_ids`](Self::set_person_ids)): the faces detected since
    /// the last run whose person ids were all written. An index range (`person_run` null),
    /// not a scan of the gallery.
    pub async fn new_faces(
        &self,
        gallery_id: &str,
        model_version: &str,
    ) -> Result<Vec<FaceInput>, StoreError> {
        self.group_inputs(
            doc! {"gallery_id": gallery_id, "model_version": model_version, "person_run": null},
        )
        .await
    }

    /// The grouping input of every face matching `filter`.
    async fn group_inputs(&self, filter: Document) -> Result<Vec<FaceInput>, StoreError> {
        let mut cursor = self.faces.find(filter).await?;
        let mut out = Vec::new();
        while let Some(d) = cursor.try_next().await? {
            out.push(face_record(&d)?.group_input());
        }
        Ok(out)
    }

    /// Writes run `run_number`'s person ids onto the faces (the unassigned ones lose theirs).
    /// Every face written carries `person_run`, and a face already written by a newer run is
    /// left alone, so a slow older run can never overwrite a newer one. Ids go in chunks of
    /// [`PERSON_ID_CHUNK`] per `$in` (a gallery's unassigned faces in one filter could pass
    /// the 16 MiB BSON limit).
    pub async fn set_person_ids(&self, groups: &Groups, run_number: u64) -> Result<(), StoreError> {
        self.set_person_ids_in_chunks(groups, run_number, PERSON_ID_CHUNK)
            .await
    }

    /// [`set_person_ids`](Self::set_person_ids) with `chunk` ids per `$in` (tests use a small
    /// one: the chunking is the same, without thousands of documents).
    pub async fn set_person_ids_in_chunks(
        &self,
        groups: &Groups,
        run_number: u64,
        chunk: usize,
    ) -> Result<(), StoreError> {
        let chunk = chunk.max(1);
        let run = run_number as i64;
        let not_newer =
            doc! {"$or": [{"person_run": {"$exists": false}}, {"person_run": {"$lte": run}}]};
        for p in &groups.persons {
            for ids in p.face_ids.chunks(chunk) {
                let mut filter = not_newer.clone();
                filter.insert("_id", doc! {"$in": ids});
                self.faces
                    .update_many(
                        filter,
                        doc! {"$set": {"person_id": &p.person_id, "person_run": run}},
                    )
                    .await?;
            }
        }
        for ids in groups.unassigned.chunks(chunk) {
            let mut filter = not_newer.clone();
            filter.insert("_id", doc! {"$in": ids});
            self.faces
                .update_many(
                    filter,
                    doc! {"$unset": {"person_id": ""}, "$set": {"person_run": run}},
                )
                .await?;
        }
        Ok(())
    }
}

/// MongoDB's duplicate key error (E11000): an upsert whose filter excludes a tombstone
/// collides with it on `_id`.
fn is_duplicate_key(e: &mongodb::error::Error) -> bool {
    use mongodb::error::{ErrorKind, WriteFailure};
    match e.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == 11000,
        ErrorKind::Command(c) => c.code == 11000,
        _ => false,
    }
}

/// An image id as a field name: ids may hold `.`, which MongoDB reads as a path separator, and
/// never `:` (see `jobs::check_id`), so the mapping is unambiguous.
fn trigger_field(image_id: &str) -> String {
    image_id.replace('.', ":")
}

/// The stored document of a face (without gallery and timestamps): `_id` is the face id, the
/// embedding little-endian f32 bytes.
fn face_document(f: &FaceRecord) -> Result<Document, StoreError> {
    let quality = bson::to_bson(&f.quality).map_err(|e| StoreError::Malformed(e.to_string()))?;
    let keypoints: Vec<Bson> = f
        .landmarks
        .iter()
        .map(|p| Bson::Array(vec![Bson::Double(p[0].into()), Bson::Double(p[1].into())]))
        .collect();
    Ok(doc! {
        "image_id": &f.image_id,
        "face_index": f.index as i32,
        "model_version": &f.model_version,
        "bbox": {"x1": f.bbox[0] as f64, "y1": f.bbox[1] as f64,
                 "x2": f.bbox[2] as f64, "y2": f.bbox[3] as f64},
        "keypoints": keypoints,
        "det_score": f.score as f64,
        "quality": quality,
        "quality_ok": f.quality.passes(),
        "embedding": Binary { subtype: BinarySubtype::Generic, bytes: encode_embedding(&f.embedding) },
        "embedding_dim": f.embedding.len() as i32,
    })
}

/// The [`FaceRecord`] of a stored face document ([`face_document`]'s inverse).
fn face_record(d: &Document) -> Result<FaceRecord, StoreError> {
    let bad = |what: &str| StoreError::Malformed(format!("face {:?}: {what}", d.get("_id")));
    let text = |key: &str| d.get_str(key).map(str::to_string).map_err(|_| bad(key));
    let number = |doc: &Document, key: &str| -> Result<f32, StoreError> {
        match doc.get(key) {
            Some(Bson::Double(v)) => Ok(*v as f32),
            Some(Bson::Int32(v)) => Ok(*v as f32),
            Some(Bson::Int64(v)) => Ok(*v as f32),
            _ => Err(bad(key)),
        }
    };
    let embedding = decode_embedding(
        d.get_binary_generic("embedding")
            .map_err(|_| bad("embedding"))?,
    )
    .ok_or_else(|| bad("embedding length"))?;
    let quality = bson::from_document(
        d.get_document("quality")
            .map_err(|_| bad("quality"))?
            .clone(),
    )
    .map_err(|e| bad(&format!("quality: {e}")))?;
    let b = d.get_document("bbox").map_err(|_| bad("bbox"))?;
    let mut landmarks = [[0.0f32; 2]; 5];
    let points = d.get_array("keypoints").map_err(|_| bad("keypoints"))?;
    if points.len() != 5 {
        return Err(bad("keypoints"));
    }
    for (slot, p) in landmarks.iter_mut().zip(points) {
        let xy = p
            .as_array()
            .filter(|a| a.len() == 2)
            .ok_or_else(|| bad("keypoints"))?;
        for (v, x) in slot.iter_mut().zip(xy) {
            *v = x.as_f64().ok_or_else(|| bad("keypoints"))? as f32;
        }
    }
    Ok(FaceRecord {
        face_id: text("_id")?,
        image_id: text("image_id")?,
        model_version: text("model_version")?,
        index: d
            .get_i32("face_index")
            .map_err(|_| bad("face_index"))?
            .max(0) as u32,
        bbox: [
            number(b, "x1")?,
            number(b, "y1")?,
            number(b, "x2")?,
            number(b, "y2")?,
        ],
        landmarks,
        score: number(d, "det_score")?,
        quality,
        embedding,
    })
}

/// Little-endian f32s: 2 KiB for a 512-d embedding, a quarter of a BSON double array.
pub fn encode_embedding(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub fn decode_embedding(bytes: &[u8]) -> Option<Vec<f32>> {
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    Some(
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedding_round_trips_bit_exact() {
        let v = vec![0.1f32, -2.5, f32::MIN_POSITIVE, 1.0];
        assert_eq!(decode_embedding(&encode_embedding(&v)), Some(v));
        assert_eq!(decode_embedding(&[1, 2, 3]), None);
    }

    #[test]
    fn face_documents_round_trip() {
        let record = FaceRecord {
            face_id: facegroup_core::face_id("img", "a+b", 1),
            image_id: "img".into(),
            model_version: "a+b".into(),
            index: 1,
            bbox: [1.0, 2.0, 30.5, 40.25],
            landmarks: [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0], [9.0, 10.5]],
            score: 0.75,
            quality: facegroup_core::Quality {
                sharpness: 100.0,
                brightness: 120.0,
                contrast: 40.0,
                highlights: 0.0,
                shadows: 0.01,
                yaw: 3.0,
                pitch: -2.0,
                roll: 1.5,
                face_size: 28.0,
                det_score: 0.75,
                occlusion: 0.0,
                overall: 0.6,
                reasons: vec![facegroup_core::QualityReason::LowSharpness],
            },
            embedding: vec![0.5, -0.25, 0.125],
        };
        let mut d = face_document(&record).expect("encode");
        d.insert("_id", &record.face_id);
        assert_eq!(face_record(&d).expect("decode"), record);
        d.remove("embedding");
        assert!(face_record(&d).is_err());
    }

    #[test]
    fn image_keys_are_scoped_by_gallery() {
        assert_eq!(image_key("g1", "img.jpg"), "g1/img.jpg");
        assert_ne!(image_key("g1", "x"), image_key("g2", "x"));
        assert_eq!(trigger_field("a.b.jpg"), "a:b:jpg");
    }
}
