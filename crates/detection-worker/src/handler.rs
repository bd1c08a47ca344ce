//! One detection job: status pending -> read image (size-limited) -> pipeline -> faces upserted
//! -> faces JSON to S3 -> status done -> maybe a grouping job. Every step is idempotent, so a
//! redelivered message (after a crash or a lost delete) rewrites the same documents.

use std::sync::Arc;

use facegroup_core::{Error as CoreError, Face, FaceRecord, GroupMode, PipelinePool};
use facegroup_worker::jobs::{self, DetectionJob, GroupingJob};
use facegroup_worker::mongo::{ImageRef, MongoStore};
use facegroup_worker::s3::S3Store;
use facegroup_worker::{Handler, JobError, JobReport, Message};
use serde::Serialize;
use tracing::{info, warn};

/// The detection job handler.
pub struct DetectionHandler {
    pub s3: S3Store,
    pub mongo: MongoStore,
    pub sqs: aws_sdk_sqs::Client,
    pub grouping_queue_url: Option<String>,
    pub group_after_faces: usize,
    pub results_prefix: String,
    /// Pipelines are borrowed for the inference step only, on a blocking thread.
    pub pool: Arc<PipelinePool>,
}

impl DetectionHandler {
    /// Decodes and analyses `bytes` on a blocking thread with a free pipeline.
    async fn analyze(&self, bytes: Vec<u8>) -> Result<(u32, u32, Vec<Face>), JobError> {
        let pool = self.pool.clone();
        let joined =
            tokio::task::spawn_blocking(move || pool.with(|p| p.analyze_bytes(&bytes))).await;
        match joined {
            Ok(Ok((img, faces))) => Ok((img.width(), img.height(), faces)),
            Ok(Err(e @ CoreError::Decode(_))) => Err(JobError::permanent(e.to_string())),
            Ok(Err(e @ CoreError::Model(_))) => Err(JobError::fatal(e.to_string())),
            Err(e) => Err(JobError::fatal(format!("inference thread died: {e}"))),
        }
    }
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
        self.mongo
            .mark_pending(&ImageRef {
                image_id: &job.image_id,
                gallery_id: &job.gallery_id,
                bucket: &job.bucket,
                key: &job.key,
                callback: job.callback.as_deref(),
                metadata: job.metadata.as_ref(),
            })
            .await?;
        let bytes = self.s3.get(&job.bucket, &job.key).await?;
        let (width, height, faces) = self.analyze(bytes).await?;

        let model_version = self.pool.model_version();
        let records: Vec<FaceRecord> = faces
            .iter()
            .map(|f| FaceRecord::new(&job.image_id, model_version, f))
            .collect();
        self.mongo
            .replace_faces(&job.image_id, &job.gallery_id, model_version, &records)
            .await?;
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
        let key = format!(
            "{}{}/{}.json",
            self.results_prefix, job.gallery_id, job.image_id
        );
        self.s3.put_json(&key, &doc).await?;

        let first_time = self.mongo.mark_done(&job.image_id, faces.len()).await?;
        if first_time && !faces.is_empty() {
            self.maybe_enqueue_grouping(&job.gallery_id, faces.len())
                .await?;
        }
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
            .and_then(|v| v.get("gallery_id")?.as_str().map(str::to_string));
        self.mongo
            .mark_failed(
                &image_id,
                gallery.as_deref(),
                err.class.as_str(),
                &err.reason,
            )
            .await?;
        Ok(())
    }
}

impl DetectionHandler {
    /// Debounced grouping: the gallery's counter crossing the threshold with no job pending
    /// enqueues one (only one concurrent caller can win that transition).
    async fn maybe_enqueue_grouping(
        &self,
        gallery_id: &str,
        new_faces: usize,
    ) -> Result<(), JobError> {
        let Some(queue) = &self.grouping_queue_url else {
            return Ok(());
        };
        if !self
            .mongo
            .add_new_faces(gallery_id, new_faces, self.group_after_faces)
            .await?
        {
            return Ok(());
        }
        let body = serde_json::to_string(&GroupingJob {
            gallery_id: gallery_id.to_string(),
            mode: GroupMode::Full,
            min_quality: None,
        })
        .map_err(|e| JobError::temporary(e.to_string()))?;
        if let Err(e) = self
            .sqs
            .send_message()
            .queue_url(queue)
            .message_body(body)
            .send()
            .await
        {
            // Leave no gallery stuck "pending": the next new faces will trigger again.
            warn!(gallery_id, error = %aws_sdk_sqs::error::DisplayErrorContext(&e), "cannot enqueue grouping job");
            self.mongo.clear_grouping_pending(gallery_id).await?;
            return Ok(());
        }
        info!(gallery_id, "grouping job enqueued");
        Ok(())
    }
}
