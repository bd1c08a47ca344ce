//! One detection job: status pending -> read image (size-limited) -> pipeline (and each face's
//! JPEG thumbnails) -> thumbnails to S3 -> faces upserted (naming their thumbnails) -> faces
//! JSON to S3 -> face count set on the gallery's grouping trigger (maybe a grouping job) ->
//! status done. The thumbnails are written before the faces, so a stored face never names a
//! missing thumbnail. Every step is idempotent and the status is written last, so a redelivered
//! message (after a crash or a lost delete) rewrites the same documents and completes what the
//! crashed attempt left; a duplicate of a finished image is acknowledged without redoing it.
//!
//! Deleted images (README "Deletion"): a job whose image or gallery is a tombstone when it
//! starts, or became one by the time of its last write (the gallery is checked just before it,
//! and `mark_done` never matches an image tombstone), erases whatever of the image it or an
//! earlier attempt wrote and is acknowledged, so a late or racing detection never brings a
//! deleted image back.
//!
//! Error classes: a decode failure is the input's (permanent); an inference failure or a panic
//! on one image is *suspect*, and the consumer asks [`Handler::probe`] to run the pipeline on a
//! known-good image: it passes -> the image is marked failed (one poison image no longer kills
//! every instance that receives it); it fails -> GPU/runtime failure, exit 3. Runtime-load and
//! execution-provider errors stay fatal.

use std::sync::{Arc, Mutex};

use facegroup_core::{
    face_thumbnails, Error as CoreError, Face, FaceRecord, GroupMode, ModelError, PipelinePool,
    Thumbnails,
};
use facegroup_worker::erase::{erase_image, result_key, Prefixes};
use facegroup_worker::jobs::{self, DetectionJob, GroupingJob};
use facegroup_worker::mongo::{image_key, Begin, ImageRef};
use facegroup_worker::{fault, thumbs};
use facegroup_worker::{Handler, JobError, JobReport, Message, Services};
use serde::Serialize;
use tracing::{info, warn};

/// The detection job handler.
pub struct DetectionHandler {
    /// S3, MongoDB and SQS (for the grouping trigger).
    pub services: Services,
    pub grouping_queue_url: Option<String>,
    pub group_after_faces: usize,
    /// How long a sent grouping job counts as pending before a later detection re-sends it.
    pub grouping_pending_for: std::time::Duration,
    pub results_prefix: String,
    /// Key prefix of the face thumbnails (`facegroup_worker::thumbs`).
    pub thumbnails_prefix: String,
    /// Pipelines are borrowed for the inference step only, on a blocking thread.
    pub pool: Arc<PipelinePool>,
    /// The probe's known-good image: the first small input that ran with faces found (it
    /// exercises detector and embedder on this very runtime).
    pub known_good: Mutex<Option<Arc<Vec<u8>>>>,
}

impl DetectionHandler {
    /// Decodes and analyses `bytes` of image `id` on a blocking thread with a free pipeline,
    /// and makes each face's thumbnails from the decoded image.
    async fn analyze(&self, id: &str, bytes: Vec<u8>) -> Result<Analysed, JobError> {
        let pool = self.pool.clone();
        let bytes = Arc::new(bytes);
        let input = bytes.clone();
        let id_owned = id.to_string();
        let joined = tokio::task::spawn_blocking(move || {
            pool.with(|p| {
                if fault::inference_fails(&id_owned) {
                    return Err(JobError::suspect(format!(
                        "inference failed on {id_owned} (test hook)"
                    )));
                }
                if fault::runtime_broken(Some(&id_owned)) {
                    return Err(JobError::suspect(
                        "inference failed: runtime broken (test hook)",
                    ));
                }
                let (img, faces) = match p.analyze_bytes(&input) {
                    Ok(out) => out,
                    Err(e @ CoreError::Decode(_)) => {
                        return Err(JobError::permanent(e.to_string()))
                    }
                    Err(CoreError::Model(e)) => return Err(classify_model_error(e)),
                };
                let thumbnails = faces
                    .iter()
                    .map(|f| face_thumbnails(&img, f))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| JobError::permanent(e.to_string()))?;
                Ok(Analysed {
                    width: img.width(),
                    height: img.height(),
                    faces,
                    thumbnails,
                })
            })
        })
        .await;
        // A panic in inference (the pool gets its pipeline back) is suspect like an error.
        let out = joined
            .unwrap_or_else(|e| Err(JobError::suspect(format!("inference thread died: {e}"))))?;
        if !out.faces.is_empty() && bytes.len() <= MAX_KNOWN_GOOD_BYTES {
            lock(&self.known_good).get_or_insert(bytes);
        }
        Ok(out)
    }

    /// Runs the pipeline on the known-good image (the first small input that gave faces, or
    /// before that a blank image that still runs the detector): `Err` means the runtime itself
    /// is broken.
    async fn run_probe(&self) -> Result<(), String> {
        let known = lock(&self.known_good).clone();
        let pool = self.pool.clone();
        let joined = tokio::task::spawn_blocking(move || {
            pool.with(|p| {
                if fault::runtime_broken(None) {
                    return Err("runtime broken (test hook)".to_string());
                }
                let faces = match &known {
                    Some(bytes) => p
                        .analyze_bytes(bytes)
                        .map(|(_, f)| f)
                        .map_err(|e| e.to_string())?,
                    None => {
                        let blank =
                            facegroup_core::RgbImage::from_raw(320, 240, vec![127; 320 * 240 * 3])
                                .ok_or("blank probe image")?;
                        p.analyze(&blank).map_err(|e| e.to_string())?
                    }
                };
                if known.is_some() && faces.is_empty() {
                    return Err("the known-good image now yields no face".to_string());
                }
                Ok(())
            })
        })
        .await;
        joined.unwrap_or_else(|e| Err(format!("probe thread died: {e}")))
    }
}

/// What the pipeline made of one image.
struct Analysed {
    width: u32,
    height: u32,
    faces: Vec<Face>,
    /// One per face, in order.
    thumbnails: Vec<Thumbnails>,
}

/// Largest input kept as the probe's known-good image.
const MAX_KNOWN_GOOD_BYTES: usize = 2 << 20;

/// Inference failing on one input is suspect (the input's fault or the runtime's: the probe
/// decides); a runtime that cannot load or start its provider is fatal.
fn classify_model_error(e: ModelError) -> JobError {
    match e {
        ModelError::Inference { .. } | ModelError::Layout { .. } => {
            JobError::suspect(e.to_string())
        }
        _ => JobError::fatal(e.to_string()),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The per-image result written to S3.
#[derive(Serialize)]
struct FacesDoc<'a> {
    image_id: &'a str,
    gallery_id: &'a str,
    model_version: &'a str,
    width: u32,
    height: u32,
    faces: Vec<FaceSummary<'a>>,
}

/// A face in the per-image JSON: the stored record without its embedding.
#[derive(Serialize)]
struct FaceSummary<'a> {
    face_id: &'a str,
    face_index: u32,
    bbox: [f32; 4],
    keypoints: [[f32; 2]; 5],
    det_score: f32,
    quality: &'a facegroup_core::Quality,
}

impl Handler for DetectionHandler {
    async fn handle(&self, msg: &Message) -> Result<JobReport, JobError> {
        let job: DetectionJob = jobs::parse(&msg.body)?;
        jobs::check_id("image_id", &job.image_id)?;
        jobs::check_id("gallery_id", &job.gallery_id)?;
        if job.bucket.is_empty() || job.key.is_empty() {
            return Err(JobError::permanent("empty bucket or key"));
        }
        let img = ImageRef {
            image_id: &job.image_id,
            gallery_id: &job.gallery_id,
            bucket: &job.bucket,
            key: &job.key,
            callback: job.callback.as_deref(),
            metadata: job.metadata.as_ref(),
        };
        match self
            .services
            .mongo
            .begin(&img, self.pool.model_version())
            .await?
        {
            Begin::Run => {}
            Begin::AlreadyDone => {
                info!(image_id = %job.image_id, gallery_id = %job.gallery_id, "duplicate delivery of a done image; acknowledged");
                return Ok(JobReport::default());
            }
            Begin::Deleted => return self.drop_deleted(&job).await,
        }
        fault::crash_point("after_begin");
        let bytes = self.services.s3.get(&job.bucket, &job.key).await?;
        let Analysed {
            width,
            height,
            faces,
            thumbnails,
        } = self.analyze(&job.image_id, bytes).await?;

        let model_version = self.pool.model_version();
        // Faces are named by the gallery-scoped image key: image ids are unique per gallery only.
        let scoped = image_key(&job.gallery_id, &job.image_id);
        let records: Vec<FaceRecord> = faces
            .iter()
            .map(|f| FaceRecord::new(&scoped, model_version, f))
            .collect();
        // Before the faces that name them (idempotent: the same keys get the same bytes).
        let named: Vec<(&str, &Thumbnails)> = records
            .iter()
            .map(|r| r.face_id.as_str())
            .zip(&thumbnails)
            .collect();
        let keys = thumbs::put(&self.services.s3, &self.thumbnails_prefix, &named).await?;
        fault::crash_point("after_put_thumbnails");
        self.services
            .mongo
            .replace_faces(
                &scoped,
                &job.gallery_id,
                model_version,
                &records,
                Some(&keys),
            )
            .await?;
        fault::crash_point("after_replace_faces");
        let doc = FacesDoc {
            image_id: &job.image_id,
            gallery_id: &job.gallery_id,
            model_version,
            width,
            height,
            faces: records
                .iter()
                .map(|r| FaceSummary {
                    face_id: &r.face_id,
                    face_index: r.index,
                    bbox: r.bbox,
                    keypoints: r.landmarks,
                    det_score: r.score,
                    quality: &r.quality,
                })
                .collect(),
        };
        let key = result_key(&self.results_prefix, &job.gallery_id, &job.image_id);
        self.services.s3.put_json(&key, &doc).await?;
        fault::crash_point("after_put_json");

        // Counted before the status says done: a crash in between is completed by the rerun
        // (the count is set, not added, so it is never counted twice).
        if !faces.is_empty() {
            self.maybe_enqueue_grouping(&job.gallery_id, &job.image_id, faces.len())
                .await?;
        }
        // The event goes out once the status says done (a rerun records the same one again).
        self.services
            .events
            .image_done(&job, model_version, faces.len())
            .await?;
        fault::pause_point("before_mark_done").await;
        // Deleted while this job ran: the tombstone (the gallery's, or the image's, which
        // `mark_done` never overwrites) came after some of the writes above, so erase them (the
        // deletion erased those before it). `mark_done` stays the last write of a live image:
        // nothing after it can be cut off by a shutdown.
        if self.services.mongo.gallery_deleted(&job.gallery_id).await?
            || !self
                .services
                .mongo
                .mark_done(&job.gallery_id, &job.image_id, faces.len(), model_version)
                .await?
        {
            return self.drop_deleted(&job).await;
        }
        fault::crash_point("after_mark_done");
        info!(image_id = %job.image_id, gallery_id = %job.gallery_id, faces = faces.len(), "image done");
        Ok(JobReport {
            images: 1,
            faces: faces.len() as u64,
        })
    }

    async fn record_failure(&self, msg: &Message, err: &JobError) -> Result<(), JobError> {
        let Some(image_id) = jobs::image_id_of(&msg.body) else {
            warn!(message_id = %msg.message_id, reason = %err.reason, "failed message names no valid image; nothing to record");
            return Ok(());
        };
        let gallery = serde_json::from_str::<serde_json::Value>(&msg.body)
            .ok()
            .and_then(|v| v.get("gallery_id")?.as_str().map(str::to_string))
            .filter(|g| jobs::check_id("gallery_id", g).is_ok());
        let Some(gallery) = gallery else {
            // Status documents are per gallery: without a valid one there is none to mark.
            warn!(message_id = %msg.message_id, reason = %err.reason, "failed message names no valid gallery; nothing to record");
            return Ok(());
        };
        self.services
            .mongo
            .mark_failed(&gallery, &image_id, err.class.as_str(), &err.reason)
            .await?;
        self.services
            .events
            .image_failed(msg, &gallery, &image_id, err)
            .await?;
        Ok(())
    }

    async fn probe(&self) -> Result<(), String> {
        self.run_probe().await
    }
}

impl DetectionHandler {
    /// Acknowledges a job of a deleted image after erasing what this or an earlier attempt of
    /// it may have written (the image ends as a tombstone).
    async fn drop_deleted(&self, job: &DetectionJob) -> Result<JobReport, JobError> {
        erase_image(
            &self.services.mongo,
            &self.services.s3,
            Prefixes {
                results: &self.results_prefix,
                thumbnails: &self.thumbnails_prefix,
            },
            &job.gallery_id,
            &job.image_id,
        )
        .await?;
        info!(image_id = %job.image_id, gallery_id = %job.gallery_id, "image was deleted; job dropped");
        Ok(JobReport::default())
    }

    /// Debounced grouping: the gallery's new faces crossing the threshold with no job pending
    /// enqueues one (only one concurrent caller can win that claim; a claim whose send was lost
    /// is re-sent by this image's redelivery or, once it expires, by a later detection).
    async fn maybe_enqueue_grouping(
        &self,
        gallery_id: &str,
        image_id: &str,
        new_faces: usize,
    ) -> Result<(), JobError> {
        let Some(queue) = &self.grouping_queue_url else {
            return Ok(());
        };
        if !self
            .services
            .mongo
            .add_new_faces(
                gallery_id,
                image_id,
                new_faces,
                self.group_after_faces,
                self.grouping_pending_for,
            )
            .await?
        {
            return Ok(());
        }
        fault::crash_point("after_grouping_claim");
        let body = serde_json::to_string(&GroupingJob {
            gallery_id: gallery_id.to_string(),
            mode: GroupMode::Full,
            min_quality: None,
            callback: None,
        })
        .map_err(|e| JobError::temporary(e.to_string()))?;
        if let Err(e) = self
            .services
            .sqs
            .send_message()
            .queue_url(queue)
            .message_body(body)
            .send()
            .await
        {
            // Leave no gallery stuck "pending": the next new faces will trigger again.
            warn!(gallery_id, error = %aws_sdk_sqs::error::DisplayErrorContext(&e), "cannot enqueue grouping job");
            self.services
                .mongo
                .clear_grouping_pending(gallery_id)
                .await?;
            return Ok(());
        }
        fault::crash_point("after_grouping_send");
        info!(gallery_id, "grouping job enqueued");
        Ok(())
    }
}
