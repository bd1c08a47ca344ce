//! One grouping job: faces from MongoDB + the previous run from S3 -> persons -> new run and
//! `latest` pointer in S3 -> person ids on the faces. A redelivered job regroups from the run it
//! itself wrote, so person ids stay stable across retries.

use std::time::{SystemTime, UNIX_EPOCH};

use facegroup_core::{regroup, GroupConfig, GroupError, GroupMode, Groups};
use facegroup_worker::jobs::{self, GroupingJob};
use facegroup_worker::mongo::MongoStore;
use facegroup_worker::s3::S3Store;
use facegroup_worker::{Handler, JobError, JobReport, Message};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

/// The grouping job handler.
pub struct GroupingHandler {
    pub s3: S3Store,
    pub mongo: MongoStore,
    pub groups_prefix: String,
    pub model_version: String,
    pub config: GroupConfig,
}

/// `groups/{gallery}/{run}.json`.
#[derive(Debug, Serialize, Deserialize)]
pub struct GroupRun {
    pub gallery_id: String,
    pub run_id: String,
    pub mode: GroupMode,
    pub model_version: String,
    pub created_at_ms: u64,
    pub face_count: usize,
    pub persons: Vec<facegroup_core::Person>,
    pub unassigned: Vec<String>,
}

/// `groups/{gallery}/latest.json`: which run is current.
#[derive(Debug, Serialize, Deserialize)]
pub struct Latest {
    pub run_id: String,
    pub key: String,
}

impl Handler for GroupingHandler {
    async fn handle(&self, msg: &Message) -> Result<JobReport, JobError> {
        let job: GroupingJob = jobs::parse(&msg.body)?;
        jobs::check_id("gallery_id", &job.gallery_id)?;
        let mut cfg = self.config.clone();
        if let Some(q) = job.min_quality {
            if !(0.0..=1.0).contains(&q) {
                return Err(JobError::permanent(format!("min_quality {q} not in 0..=1")));
            }
            cfg.min_quality = q;
        }
        // Cleared first: faces that arrive while this job runs must be able to trigger the next.
        self.mongo.clear_grouping_pending(&job.gallery_id).await?;
        let faces = self
            .mongo
            .gallery_faces(&job.gallery_id, &self.model_version)
            .await?;
        let previous = self.previous(&job.gallery_id).await?;
        let prev_groups = previous.map(|p| Groups {
            persons: p.persons,
            unassigned: p.unassigned,
        });
        let face_count = faces.len();
        let (groups, mode) = if faces.is_empty() {
            (Groups::default(), job.mode.effective(prev_groups.is_some()))
        } else {
            let requested = job.mode;
            tokio::task::spawn_blocking(move || {
                regroup(&faces, &cfg, requested, prev_groups.as_ref())
            })
            .await
            .map_err(|e| JobError::temporary(format!("grouping thread died: {e}")))?
            .map_err(classify)?
        };

        let created_at_ms = now_ms();
        let run_id = format!("{created_at_ms:013}-{}", short(&msg.message_id));
        let key = format!("{}{}/{run_id}.json", self.groups_prefix, job.gallery_id);
        let run = GroupRun {
            gallery_id: job.gallery_id.clone(),
            run_id: run_id.clone(),
            mode,
            model_version: self.model_version.clone(),
            created_at_ms,
            face_count,
            persons: groups.persons.clone(),
            unassigned: groups.unassigned.clone(),
        };
        self.s3.put_json(&key, &run).await?;
        self.s3
            .put_json(
                &self.latest_key(&job.gallery_id),
                &Latest {
                    run_id,
                    key: key.clone(),
                },
            )
            .await?;
        self.mongo.set_person_ids(&groups).await?;
        info!(gallery_id = %job.gallery_id, faces = face_count, persons = groups.persons.len(), %key, "gallery grouped");
        Ok(JobReport {
            images: 0,
            faces: face_count as u64,
        })
    }

    async fn record_failure(&self, msg: &Message, err: &JobError) -> Result<(), JobError> {
        // A grouping job has no image to mark; the log line and the failure metric record it.
        warn!(message_id = %msg.message_id, reason = %err.reason, "grouping job failed permanently");
        Ok(())
    }
}

impl GroupingHandler {
    fn latest_key(&self, gallery_id: &str) -> String {
        format!("{}{gallery_id}/latest.json", self.groups_prefix)
    }

    /// The current run of the gallery, if any.
    async fn previous(&self, gallery_id: &str) -> Result<Option<GroupRun>, JobError> {
        let Some(latest) = self
            .s3
            .get_json::<Latest>(&self.latest_key(gallery_id))
            .await?
        else {
            return Ok(None);
        };
        Ok(self.s3.get_json::<GroupRun>(&latest.key).await?)
    }
}

/// Bad stored embeddings cannot be fixed by a retry; FAISS trouble might be.
fn classify(e: GroupError) -> JobError {
    match e {
        GroupError::Faiss(_) => JobError::temporary(e.to_string()),
        _ => JobError::permanent(e.to_string()),
    }
}

fn short(id: &str) -> String {
    id.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(8)
        .collect()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
