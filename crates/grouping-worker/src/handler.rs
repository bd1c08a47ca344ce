//! One grouping job, run under the gallery's lease (`facegroup_worker::gallery`):
//!
//! 1. take the lease (its fencing token is the run number), or coalesce into the holder's lease
//!    and finish at once (the holder runs once more after its commit);
//! 2. faces from MongoDB; the previous run's persons from the committed run JSON, read by the
//!    exact key MongoDB records (the worker never reads an S3 key that may not exist: under the
//!    job role's GetObject-without-ListBucket a miss would be a 403);
//! 3. group, number new persons from the stored next person number (ids are never reused);
//! 4. write the person summaries (`groups/{gallery}/summaries/{run}.bin`, see below) and
//!    `groups/{gallery}/{run}.json` (concurrently), then commit the run pointer with both keys
//!    in MongoDB, conditional on still holding the lease (which the commit releases, taking
//!    coalesced requests);
//! 5. person ids on the faces, fenced by the run number, then `person_ids_run` on the gallery;
//!    `latest.json` as a convenience copy for readers; the `gallery.grouped` event into the
//!    outbox (`facegroup_worker::events`; a crash before it reruns the job, whose new run
//!    records its own); one follow-up grouping job if requests were coalesced.
//!
//! **Incremental jobs from summaries.** Step 2 of an incremental job does not read the gallery
//! when the committed run left usable person summaries (`facegroup_core::group::incremental`,
//! stored by `facegroup_worker::summaries`): it reads the summaries, the run JSON and only the
//! faces no run has written yet (no `person_run`; an index range), all three concurrently,
//! files them with `assign_with_summaries`, and in step 5 writes person ids on those faces
//! only. Usable means:
//! the commit names a summary object, `person_ids_run` is the committed run (otherwise faces
//! of the committed run may still lack their `person_run` and would pass for new), the
//! object's header names this gallery, run, model version and minimum quality, its persons are
//! the run's, and the gallery has no corrections (their must-link and cannot-link constraints
//! need every face). Anything else falls back to reading every face, which is also what a full
//! job, a first job and every job under corrections do; runs that read every face write fresh
//! summaries (not under corrections), edits by correction and deletion jobs write none. Faces
//! that an earlier run left unassigned are not tried again by the summary path (scanning them
//! against every person would grow with the gallery); the next full read does.
//!
//! Steps 2-4 run next to a task that renews the lease; losing it cancels the job before the
//! commit. An empty face set commits nothing, so the previous run and its numbering stay.
//! Failures: FAISS errors and a panic of the grouping thread are suspect (the consumer probes
//! the grouping engine on a fixed synthetic set: a failing probe means a broken GPU/FAISS and
//! exit 3); bad stored data is permanent; store trouble and a lost lease are temporary.
//!
//! Every step is safe to die after: a redelivered job takes the dead job's lease over and runs
//! again from the committed state, so the end state is an uninterrupted run's. Test builds
//! prove it by aborting at each write step (`FACEGROUP_TEST_CRASH_AT`: `after_lease`,
//! `after_clear_pending`, `after_put_run`, `after_commit`, `after_set_person_ids`,
//! `after_put_latest`, and the consumer's `before_delete`).

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use facegroup_core::group::incremental::{assign_with_summaries, summarise, PersonSummary};
use facegroup_core::{
    group_faces, regroup, Constraints, FaceInput, GroupConfig, GroupError, GroupMode, Groups,
    Person,
};
use facegroup_worker::corrections::CorrectionStore;
use facegroup_worker::error::StoreError;
use facegroup_worker::events::GroupedRun;
use facegroup_worker::gallery::{
    Acquire, Commit, CommittedRun, GalleryStore, GroupingState, Lease, Rerun,
};
use facegroup_worker::jobs::{self, GroupingJob, GroupingQueueJob};
use facegroup_worker::summaries::{self, SummaryHeader};
use facegroup_worker::{fault, Handler, JobError, JobReport, Message, Services};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

/// The grouping job handler.
pub struct GroupingHandler {
    /// S3, MongoDB and SQS (for the follow-up job of coalesced requests).
    pub services: Services,
    pub galleries: GalleryStore,
    /// The queue this worker consumes (follow-up jobs go there).
    pub queue_url: String,
    pub groups_prefix: String,
    /// Key prefix of the detection worker's per-image result JSONs (deletion jobs erase them).
    pub results_prefix: String,
    /// Key prefix of the face thumbnails: each person's representative is named with its
    /// thumbnail keys, and deletion jobs erase them.
    pub thumbnails_prefix: String,
    pub model_version: String,
    pub config: GroupConfig,
    pub lease: LeaseTiming,
}

/// How long a lease lasts without renewal, and how often the job renews it.
#[derive(Debug, Clone, Copy)]
pub struct LeaseTiming {
    pub ttl: Duration,
    pub renew_every: Duration,
}

impl LeaseTiming {
    /// Renewal four times per lifetime: three renewals may fail before the lease expires.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            renew_every: (ttl / 4).max(Duration::from_millis(500)),
        }
    }
}

/// `groups/{gallery}/{run}.json`.
#[derive(Debug, Serialize, Deserialize)]
pub struct GroupRun {
    pub gallery_id: String,
    pub run_id: String,
    /// The lease's fencing token: strictly increasing per gallery in commit order.
    #[serde(default)]
    pub run_number: u64,
    pub mode: GroupMode,
    pub model_version: String,
    pub created_at_ms: u64,
    pub face_count: usize,
    pub persons: Vec<facegroup_core::Person>,
    pub unassigned: Vec<String>,
    /// Each person's representative face (`Person::representative`: the grouping's best-quality
    /// seed face, ties to the face nearest the person's mean) with its thumbnail keys, in
    /// person order. Absent in runs written before thumbnails existed.
    #[serde(default)]
    pub representatives: Vec<Representative>,
}

/// A person's representative face and where its thumbnails are (`facegroup_worker::thumbs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Representative {
    pub person_id: String,
    pub face_id: String,
    /// The aligned 112x112 crop.
    pub thumbnail_key: String,
    /// The face with its surroundings.
    pub context_key: String,
}

/// The representatives of `persons` (a face id without thumbnail keys is left out).
fn representatives(
    thumbnails_prefix: &str,
    persons: &[facegroup_core::Person],
) -> Vec<Representative> {
    persons
        .iter()
        .filter_map(|p| {
            let keys = facegroup_worker::thumbs::keys(thumbnails_prefix, &p.representative)?;
            Some(Representative {
                person_id: p.person_id.clone(),
                face_id: p.representative.clone(),
                thumbnail_key: keys.aligned,
                context_key: keys.context,
            })
        })
        .collect()
}

/// `groups/{gallery}/latest.json`: a convenience copy of the committed run pointer for readers
/// (the worker itself never reads it; MongoDB's `huemn.galleries` is authoritative).
#[derive(Debug, Serialize, Deserialize)]
pub struct Latest {
    pub run_id: String,
    pub run_number: u64,
    pub key: String,
}

impl Handler for GroupingHandler {
    async fn handle(&self, msg: &Message) -> Result<JobReport, JobError> {
        let job = match jobs::parse_grouping_queue(&msg.body)? {
            GroupingQueueJob::Group(job) => job,
            GroupingQueueJob::Delete(deletion) => return self.delete(msg, &deletion).await,
            GroupingQueueJob::Correct(correction) => return self.correct(msg, &correction).await,
        };
        jobs::check_id("gallery_id", &job.gallery_id)?;
        let mut cfg = self.config.clone();
        if let Some(q) = job.min_quality {
            if !(0.0..=1.0).contains(&q) {
                return Err(JobError::permanent(format!("min_quality {q} not in 0..=1")));
            }
            cfg.min_quality = q;
        }
        let full = job.mode == GroupMode::Full;
        let (lease, state) = match self
            .galleries
            .acquire(
                &job.gallery_id,
                &msg.message_id,
                self.lease.ttl,
                full,
                job.min_quality,
            )
            .await?
        {
            Acquire::Acquired { lease, state } => {
                fault::crash_point("after_lease");
                (lease, state)
            }
            Acquire::Coalesced { holder_token } => {
                info!(gallery_id = %job.gallery_id, holder_token, "gallery is being grouped; request coalesced into the running job");
                return Ok(JobReport::default());
            }
        };
        let result = self.run_leased(&job, cfg, &lease, state).await;
        if result.is_err() {
            // Let the retry (or any other job) start at once instead of after the expiry.
            if let Err(e) = self.galleries.abandon(&lease).await {
                warn!(gallery_id = %job.gallery_id, error = %e, "cannot give the lease up; it expires");
            }
        }
        result
    }

    async fn record_failure(&self, msg: &Message, err: &JobError) -> Result<(), JobError> {
        // A grouping job has no image to mark; the log line and the failure metric record it.
        warn!(message_id = %msg.message_id, reason = %err.reason, "grouping job failed permanently");
        Ok(())
    }

    /// Groups a fixed synthetic set (four persons of ten faces) with the worker's grouping
    /// configuration, on the GPU index when one is configured.
    async fn probe(&self) -> Result<(), String> {
        let mut cfg = self.config.clone();
        if cfg.knn.gpu {
            // The GPU index is only used above `exact_max` faces.
            cfg.knn.exact_max = 0;
        }
        let (faces, persons, per_person) = probe_faces();
        let groups = tokio::task::spawn_blocking(move || group(&faces, &cfg, None, None, None))
            .await
            .map_err(|e| format!("probe grouping thread died: {e}"))?
            .map_err(|e| format!("probe grouping failed: {e}"))?;
        let sizes: Vec<usize> = groups.persons.iter().map(|p| p.face_ids.len()).collect();
        if sizes != vec![per_person; persons] {
            return Err(format!(
                "probe grouped {persons} persons of {per_person} faces into {sizes:?}"
            ));
        }
        Ok(())
    }
}

/// How the leased part of a job ended (the lease is released either way).
enum Leased {
    /// No faces: nothing committed; the coalesced requests taken with the release.
    Empty(Option<Rerun>),
    Committed(Committed),
}

/// What a committed job leaves to do.
pub(crate) struct Committed {
    pub(crate) run_number: u64,
    pub(crate) run_id: String,
    pub(crate) key: String,
    pub(crate) groups: Groups,
    /// The faces whose person ids this run changed, when not all of `groups` (the summary
    /// path: the new faces only; every other face keeps the id an earlier run wrote).
    pub(crate) changed: Option<Groups>,
    pub(crate) rerun: Option<Rerun>,
}

/// What a run writes besides its run JSON.
#[derive(Default)]
pub(crate) struct Written {
    /// The person summaries for the next incremental job, with the minimum quality they were
    /// made under.
    pub(crate) summaries: Option<(Vec<PersonSummary>, f32)>,
    /// See [`Committed::changed`].
    pub(crate) changed: Option<Groups>,
}

/// The summary path's input ([`GroupingHandler::summary_input`]).
struct SummaryInput {
    previous: Groups,
    summaries: Vec<PersonSummary>,
    new_faces: Vec<FaceInput>,
}

impl GroupingHandler {
    /// Everything after the lease was taken. The part up to the commit runs next to the lease
    /// renewal and stops when the lease is lost.
    async fn run_leased(
        &self,
        job: &GroupingJob,
        cfg: GroupConfig,
        lease: &Lease,
        state: GroupingState,
    ) -> Result<JobReport, JobError> {
        let previous_run = state.committed.as_ref().map_or(0, |c| c.run_number);
        let leased = tokio::select! {
            r = self.group_and_commit(job, cfg, lease, state) => r?,
            lost = self.keep_lease(lease) => return Err(lost),
        };
        let done = match leased {
            Leased::Committed(done) => done,
            Leased::Empty(rerun) => {
                if let Some(rerun) = rerun {
                    self.follow_up(&job.gallery_id, rerun).await?;
                }
                return Ok(JobReport::default());
            }
        };
        // Past the commit the lease is released; these writes are fenced by the run number.
        fault::crash_point("after_commit");
        self.services
            .mongo
            .set_person_ids(
                done.changed.as_ref().unwrap_or(&done.groups),
                done.run_number,
            )
            .await?;
        self.galleries
            .mark_person_ids_written(&job.gallery_id, done.run_number)
            .await?;
        fault::crash_point("after_set_person_ids");
        self.write_latest(&job.gallery_id, &done).await?;
        fault::crash_point("after_put_latest");
        self.delete_uncommitted_runs(&job.gallery_id, previous_run, done.run_number)
            .await;
        self.announce(job, &done).await?;
        if let Some(rerun) = done.rerun {
            self.follow_up(&job.gallery_id, rerun).await?;
        }
        let faces = done.groups.face_count();
        info!(gallery_id = %job.gallery_id, run_number = done.run_number, faces,
              persons = done.groups.persons.len(), key = %done.key, "gallery grouped");
        Ok(JobReport {
            images: 0,
            faces: faces as u64,
        })
    }

    /// Records the `gallery.grouped` event of committed run `done` (to `job`'s callback and
    /// the configured targets).
    pub(crate) async fn announce(
        &self,
        job: &GroupingJob,
        done: &Committed,
    ) -> Result<(), JobError> {
        let run = GroupedRun {
            run_number: done.run_number,
            run_id: &done.run_id,
            groups_key: &done.key,
            model_version: &self.model_version,
            face_count: done.groups.face_count(),
            person_count: done.groups.persons.len(),
            unassigned_count: done.groups.unassigned.len(),
        };
        self.services.events.gallery_grouped(job, run).await?;
        Ok(())
    }

    /// Steps 2-4 of the module docs; ends with the lease released (nothing may follow the
    /// release in here: the renewal next to it would report the lease lost).
    async fn group_and_commit(
        &self,
        job: &GroupingJob,
        cfg: GroupConfig,
        lease: &Lease,
        state: GroupingState,
    ) -> Result<Leased, JobError> {
        if state.deleted {
            info!(gallery_id = %job.gallery_id, "gallery was deleted; nothing to group");
            return Ok(Leased::Empty(self.galleries.release(lease).await?));
        }
        // Cleared under the lease: faces that arrive from now on trigger the next job, and this
        // job reads the faces after the clear, so it covers everything before it.
        self.services
            .mongo
            .clear_grouping_pending(&job.gallery_id)
            .await?;
        fault::crash_point("after_clear_pending");
        // Users' corrections bind every run: anchored persons keep their faces, ids and names.
        let book = self.corrections().load(&job.gallery_id).await?;
        if job.mode == GroupMode::Incremental && book.persons.is_empty() {
            if let Some(input) = self.summary_input(&job.gallery_id, &cfg, &state).await? {
                return self
                    .assign_and_commit(lease, cfg, state.next_person, input)
                    .await
                    .map(Leased::Committed);
            }
        }
        let faces = self
            .services
            .mongo
            .gallery_faces(&job.gallery_id, &self.model_version)
            .await?;
        if faces.is_empty() {
            // Nothing to group: keep the committed run and its numbering.
            info!(gallery_id = %job.gallery_id, "no faces; the committed run stays");
            return Ok(Leased::Empty(self.galleries.release(lease).await?));
        }
        let previous = self.previous(&job.gallery_id, &state).await?;
        let mode = job.mode.effective(previous.is_some());
        let prev_groups = previous.map(|p| Groups {
            persons: p.persons,
            unassigned: p.unassigned,
        });
        let min_quality = cfg.min_quality;
        let (groups, next_person, summaries) = tokio::task::spawn_blocking(move || {
            let constraints = book.constraints();
            let constraints = (!constraints.is_empty()).then_some(&constraints);
            let mut groups = group(&faces, &cfg, prev_groups.as_ref(), Some(mode), constraints)?;
            book.label(&mut groups);
            let next = number_new_persons(&mut groups, prev_groups.as_ref(), state.next_person);
            // The next incremental job's summaries; under corrections it reads every face
            // anyway (the summaries cannot carry the constraints), so none are written.
            let summaries = if book.persons.is_empty() {
                Some(summarise(&groups, &faces, &cfg)?)
            } else {
                None
            };
            Ok::<_, GroupError>((groups, next, summaries))
        })
        .await
        .map_err(|e| JobError::suspect(format!("grouping thread died: {e}")))?
        .map_err(classify)?;
        let written = Written {
            summaries: summaries.map(|s| (s, min_quality)),
            changed: None,
        };
        let model_version = &self.model_version;
        self.commit_run(lease, mode, model_version, groups, next_person, written)
            .await
            .map(Leased::Committed)
    }

    /// What the summary path starts from, or `None` (with the reason logged) when the
    /// committed run has no usable summaries and the job must read every face: no committed
    /// run or no summaries with it (a first run, an edit, a run under corrections), person ids
    /// of the committed run not all on the faces yet (its job died after the commit: the faces'
    /// `person_run` then does not tell new faces from grouped ones), summaries missing,
    /// corrupt or made for another run, model version or minimum quality, or new faces that
    /// the committed run already holds.
    async fn summary_input(
        &self,
        gallery_id: &str,
        cfg: &GroupConfig,
        state: &GroupingState,
    ) -> Result<Option<SummaryInput>, JobError> {
        let Some(committed) = &state.committed else {
            return Ok(None);
        };
        let Some(key) = &committed.summary_key else {
            info!(
                gallery_id,
                run_number = committed.run_number,
                "committed run has no person summaries; reading every face"
            );
            return Ok(None);
        };
        if state.person_ids_run != committed.run_number {
            warn!(
                gallery_id,
                run_number = committed.run_number,
                person_ids_run = state.person_ids_run,
                "person ids of the committed run are not all written; reading every face"
            );
            return Ok(None);
        }
        let s3 = &self.services.s3;
        // The three inputs are independent reads (at 1M faces ~120 MiB of summaries, ~60 MiB
        // of run JSON): read concurrently, then decoded on two threads. A fallback below
        // wastes the other reads, which only happens once per edit or damage.
        let (bytes, run_bytes, new_faces) = tokio::join!(
            s3.get(s3.bucket(), key),
            s3.get(s3.bucket(), &committed.key),
            self.services
                .mongo
                .new_faces(gallery_id, &self.model_version)
        );
        // The key was recorded at the commit, after the object was written: it exists unless
        // someone deleted it, which is then a fallback, not a failure.
        let bytes = match bytes {
            Ok(b) => b,
            Err(StoreError::NotFound { .. }) => {
                warn!(gallery_id, key = %key, "person summaries missing; reading every face");
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        let run_bytes = match run_bytes {
            Ok(b) => b,
            Err(StoreError::NotFound { .. }) => {
                warn!(gallery_id, key = %committed.key, "committed run JSON is missing; reading every face");
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        let new_faces = new_faces?;
        let run_key = committed.key.clone();
        let bucket = s3.bucket().to_string();
        let parse_run = tokio::task::spawn_blocking(move || {
            serde_json::from_slice::<GroupRun>(&run_bytes)
                .map_err(|e| StoreError::Malformed(format!("s3://{bucket}/{run_key}: {e}")))
        });
        let decoded = tokio::task::spawn_blocking(move || summaries::decode(&bytes))
            .await
            .map_err(|e| JobError::suspect(format!("decoding thread died: {e}")))?;
        let run = parse_run
            .await
            .map_err(|e| JobError::suspect(format!("decoding thread died: {e}")))??;
        let (header, summaries) = match decoded {
            Ok(decoded) => decoded,
            Err(e) => {
                warn!(gallery_id, key = %key, error = %e, "person summaries unreadable; reading every face");
                return Ok(None);
            }
        };
        let wanted = (
            gallery_id,
            committed.run_number,
            self.model_version.as_str(),
            cfg.min_quality.to_bits(),
        );
        let got = (
            header.gallery_id.as_str(),
            header.run_number,
            header.model_version.as_str(),
            header.min_quality.to_bits(),
        );
        if got != wanted {
            warn!(gallery_id, key = %key, ?got, ?wanted, "person summaries are for another run or settings; reading every face");
            return Ok(None);
        }
        let previous = Groups {
            persons: run.persons,
            unassigned: run.unassigned,
        };
        // `Assignment::apply` drops persons without a summary: they must be the same persons.
        let persons: HashSet<&str> = previous
            .persons
            .iter()
            .map(|p| p.person_id.as_str())
            .collect();
        let summarised: HashSet<&str> = summaries.iter().map(|p| p.person_id.as_str()).collect();
        if persons != summarised {
            warn!(gallery_id, key = %key, "person summaries do not match the committed persons; reading every face");
            return Ok(None);
        }
        let held: HashSet<&str> = previous
            .persons
            .iter()
            .flat_map(|p| &p.face_ids)
            .chain(&previous.unassigned)
            .map(String::as_str)
            .collect();
        if let Some(f) = new_faces.iter().find(|f| held.contains(f.face_id.as_str())) {
            warn!(gallery_id, face_id = %f.face_id, "a face without a run is in the committed run; reading every face");
            return Ok(None);
        }
        Ok(Some(SummaryInput {
            previous,
            summaries,
            new_faces,
        }))
    }

    /// The summary path: files the new faces under the committed persons from their summaries
    /// alone (`facegroup_core::group::incremental`), then commits like any run, with the
    /// updated summaries, and with person ids to write on the new faces only.
    async fn assign_and_commit(
        &self,
        lease: &Lease,
        cfg: GroupConfig,
        next_person: u64,
        input: SummaryInput,
    ) -> Result<Committed, JobError> {
        let min_quality = cfg.min_quality;
        let new_count = input.new_faces.len();
        let (groups, changed, summaries) = tokio::task::spawn_blocking(move || {
            if fault::forced("grouping-runtime") {
                return Err(GroupError::Faiss(
                    "forced by FACEGROUP_TEST_FAULT=grouping-runtime".into(),
                ));
            }
            let a = assign_with_summaries(&input.new_faces, input.summaries, &cfg)?;
            let groups = a.apply(&input.previous);
            let mut joined: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
            for (face, person) in &a.assigned {
                joined.entry(person).or_default().push(face);
            }
            let changed = Groups {
                persons: joined
                    .into_iter()
                    .map(|(p, faces)| Person::with_faces(p, faces))
                    .collect(),
                unassigned: a.unassigned.clone(),
            };
            Ok((groups, changed, a.summaries))
        })
        .await
        .map_err(|e| JobError::suspect(format!("grouping thread died: {e}")))?
        .map_err(classify)?;
        info!(gallery_id = %lease.gallery_id, new_faces = new_count,
              assigned = changed.persons.iter().map(|p| p.face_ids.len()).sum::<usize>(),
              "new faces filed from the person summaries");
        let written = Written {
            summaries: Some((summaries, min_quality)),
            changed: Some(changed),
        };
        let model_version = &self.model_version;
        self.commit_run(
            lease,
            GroupMode::Incremental,
            model_version,
            groups,
            next_person,
            written,
        )
        .await
    }

    /// Step 4: writes `groups` as run `lease.token` and commits it, which releases the lease.
    pub(crate) async fn commit_run(
        &self,
        lease: &Lease,
        mode: GroupMode,
        model_version: &str,
        groups: Groups,
        next_person: u64,
        written: Written,
    ) -> Result<Committed, JobError> {
        // Every face of the run is in a person or unassigned.
        let face_count = groups.face_count();
        let run_number = lease.token;
        let run_id = format!("run-{run_number:010}");
        let key = self.run_key(&lease.gallery_id, run_number);
        // Written with the run JSON, both before the commit: a crash after either leaves an
        // uncommitted run, cleaned up by the next commit with its summaries.
        let summary = match written.summaries {
            Some((summaries, min_quality)) => {
                let header = SummaryHeader {
                    gallery_id: lease.gallery_id.clone(),
                    run_number,
                    model_version: model_version.to_string(),
                    min_quality,
                    dim: 0,
                    persons: Vec::new(),
                };
                let body = summaries::encode(&header, &summaries)?;
                drop(summaries);
                Some((self.summary_key(&lease.gallery_id, run_number), body))
            }
            None => None,
        };
        let run = GroupRun {
            gallery_id: lease.gallery_id.clone(),
            run_id: run_id.clone(),
            run_number,
            mode,
            model_version: model_version.to_string(),
            created_at_ms: facegroup_worker::now_ms(),
            face_count,
            representatives: representatives(&self.thumbnails_prefix, &groups.persons),
            persons: groups.persons.clone(),
            unassigned: groups.unassigned.clone(),
        };
        let s3 = &self.services.s3;
        let summary_key = summary.as_ref().map(|(key, _)| key.clone());
        // Two independent objects of up to ~100 MiB each at 1M faces: written concurrently.
        let put_summary = async {
            match summary {
                Some((key, body)) => s3.put_bytes(&key, body, "application/octet-stream").await,
                None => Ok(()),
            }
        };
        tokio::try_join!(put_summary, s3.put_json(&key, &run))?;
        fault::crash_point("after_put_run");
        let commit = CommittedRun {
            run_id: run_id.clone(),
            run_number,
            key: key.clone(),
            face_count: face_count as u64,
            summary_key,
        };
        match self.galleries.commit(lease, &commit, next_person).await? {
            Commit::Committed { rerun } => Ok(Committed {
                run_number,
                run_id,
                key,
                groups,
                changed: written.changed,
                rerun,
            }),
            Commit::Lost => Err(JobError::temporary(format!(
                "gallery {}: lease {run_number} was taken over before the commit",
                lease.gallery_id
            ))),
        }
    }

    /// Commits `groups`, an edit of the committed run `run` (`before` is its grouping), as a
    /// new run under the job's lease token with the run's mode and model version; an edit that
    /// changes nothing commits nothing. Either way the lease is released and the coalesced
    /// requests are returned.
    pub(crate) async fn commit_edit(
        &self,
        lease: &Lease,
        run: &GroupRun,
        before: &Groups,
        groups: Groups,
        next_person: u64,
    ) -> Result<(Option<Committed>, Option<Rerun>), JobError> {
        if groups == *before {
            return Ok((None, self.galleries.release(lease).await?));
        }
        let mut done = self
            .commit_run(
                lease,
                run.mode,
                &run.model_version,
                groups,
                next_person,
                Written::default(),
            )
            .await?;
        let rerun = done.rerun.take();
        Ok((Some(done), rerun))
    }

    /// Deletes the run JSONs of the run numbers between the previous committed run and this
    /// one: jobs that wrote their run and died (or lost their lease) before committing. Their
    /// keys follow from the numbers, so nothing is listed. Best effort: a failure leaves
    /// garbage no reader follows (readers go by the committed key), not a wrong state.
    pub(crate) async fn delete_uncommitted_runs(
        &self,
        gallery_id: &str,
        previous: u64,
        current: u64,
    ) {
        /// A bound on one cleanup (a gallery with more failed attempts keeps the older ones).
        const MAX_CLEANED: u64 = 1000;
        let from = (previous + 1).max(current.saturating_sub(MAX_CLEANED));
        let keys: Vec<String> = (from..current)
            .flat_map(|n| [self.run_key(gallery_id, n), self.summary_key(gallery_id, n)])
            .collect();
        if keys.is_empty() {
            return;
        }
        if let Err(e) = self.services.s3.delete_keys(&keys).await {
            warn!(gallery_id, error = %e, "cannot delete uncommitted run JSONs; they stay as garbage");
        }
    }

    /// Takes the gallery's lease for a job that must run itself (a deletion, a correction: it
    /// never coalesces); a held lease fails the job temporarily, so it is retried.
    pub(crate) async fn take_exclusive(
        &self,
        msg: &Message,
        gallery_id: &str,
        what: &str,
    ) -> Result<(Lease, GroupingState), JobError> {
        self.galleries
            .acquire_exclusive(gallery_id, &msg.message_id, self.lease.ttl)
            .await?
            .ok_or_else(|| {
                JobError::temporary(format!(
                    "gallery {gallery_id} is being grouped; the {what} is retried"
                ))
            })
    }

    /// Runs `work` next to the renewal of `lease`, stopping it when the lease is lost; on
    /// failure gives the lease up so the retry (or any other job) starts at once.
    pub(crate) async fn under_lease<T>(
        &self,
        lease: &Lease,
        work: impl std::future::Future<Output = Result<T, JobError>>,
    ) -> Result<T, JobError> {
        let result = tokio::select! {
            r = work => r,
            lost = self.keep_lease(lease) => Err(lost),
        };
        if result.is_err() {
            if let Err(e) = self.galleries.abandon(lease).await {
                warn!(gallery_id = %lease.gallery_id, error = %e, "cannot give the lease up; it expires");
            }
        }
        result
    }

    /// Renews the lease until it is lost or cannot be renewed before it expires; returns why.
    pub(crate) async fn keep_lease(&self, lease: &Lease) -> JobError {
        let mut tick = tokio::time::interval(self.lease.renew_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // immediate: the lease was just taken
        let mut renewed = Instant::now();
        loop {
            tick.tick().await;
            match self.galleries.renew(lease, self.lease.ttl).await {
                Ok(true) => renewed = Instant::now(),
                Ok(false) => {
                    return JobError::temporary(format!(
                        "gallery {}: lease {} taken over by another job",
                        lease.gallery_id, lease.token
                    ))
                }
                Err(e) if renewed.elapsed() >= self.lease.ttl => {
                    return JobError::temporary(format!(
                        "gallery {}: lease {} expired, renewals failing: {e}",
                        lease.gallery_id, lease.token
                    ))
                }
                Err(e) => {
                    warn!(gallery_id = %lease.gallery_id, error = %e, "lease renewal failed; retrying")
                }
            }
        }
    }

    /// The committed run's persons, read by the exact key MongoDB recorded (written before the
    /// commit, so it exists). If it was deleted anyway, the job regroups without it: person ids
    /// start afresh, but from the stored next number, so none is reused.
    async fn previous(
        &self,
        gallery_id: &str,
        state: &GroupingState,
    ) -> Result<Option<GroupRun>, JobError> {
        let Some(committed) = &state.committed else {
            return Ok(None);
        };
        let run = self
            .services
            .s3
            .get_json::<GroupRun>(&committed.key)
            .await?;
        if run.is_none() {
            warn!(gallery_id, key = %committed.key, "committed run JSON is missing; regrouping without it");
        }
        Ok(run)
    }

    /// The users' corrections of the galleries (`facegroup_worker::corrections`).
    pub(crate) fn corrections(&self) -> CorrectionStore {
        CorrectionStore::new(&self.services.mongo)
    }

    /// `latest.json`, only while this run is still the committed one (a newer run writes its
    /// own); readers that need certainty use MongoDB.
    pub(crate) async fn write_latest(
        &self,
        gallery_id: &str,
        done: &Committed,
    ) -> Result<(), JobError> {
        let current = self.galleries.state(gallery_id).await?;
        if current.committed.as_ref().map(|c| c.run_number) != Some(done.run_number) {
            return Ok(());
        }
        let latest = Latest {
            run_id: done.run_id.clone(),
            run_number: done.run_number,
            key: done.key.clone(),
        };
        self.services
            .s3
            .put_json(
                &format!("{}{gallery_id}/latest.json", self.groups_prefix),
                &latest,
            )
            .await?;
        Ok(())
    }

    /// One grouping job for the requests coalesced into this job's lease. A failed send fails
    /// this job (temporary): its retry regroups everything, so no request is lost.
    pub(crate) async fn follow_up(&self, gallery_id: &str, rerun: Rerun) -> Result<(), JobError> {
        let body = serde_json::to_string(&GroupingJob {
            gallery_id: gallery_id.to_string(),
            mode: if rerun.full {
                GroupMode::Full
            } else {
                GroupMode::Incremental
            },
            min_quality: rerun.min_quality,
            callback: None,
        })
        .map_err(|e| JobError::temporary(format!("serialising follow-up job: {e}")))?;
        self.services
            .sqs
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(body)
            .send()
            .await
            .map_err(|e| {
                JobError::temporary(format!(
                    "sending the follow-up grouping job: {}",
                    aws_sdk_sqs::error::DisplayErrorContext(&e)
                ))
            })?;
        info!(
            gallery_id,
            full = rerun.full,
            "follow-up grouping job sent for coalesced requests"
        );
        Ok(())
    }
}

/// Groups `faces` (`mode` None: the probe, a full grouping). The kNN step fails on purpose in
/// test builds with `FACEGROUP_TEST_FAULT=grouping-runtime` ([`facegroup_worker::fault`]).
fn group(
    faces: &[FaceInput],
    cfg: &GroupConfig,
    previous: Option<&Groups>,
    mode: Option<GroupMode>,
    constraints: Option<&Constraints>,
) -> Result<Groups, GroupError> {
    if fault::forced("grouping-runtime") {
        return Err(GroupError::Faiss(
            "forced by FACEGROUP_TEST_FAULT=grouping-runtime".into(),
        ));
    }
    match mode {
        Some(mode) => regroup(faces, cfg, mode, previous, constraints).map(|(groups, _)| groups),
        None => group_faces(faces, cfg, previous, constraints),
    }
}

/// FAISS trouble may be a broken GPU (suspect: the probe decides); bad stored embeddings cannot
/// be fixed by a retry.
fn classify(e: GroupError) -> JobError {
    match e {
        GroupError::Faiss(_) => JobError::suspect(e.to_string()),
        _ => JobError::permanent(e.to_string()),
    }
}

/// Renames the persons that are new in this run (ids not in `previous`) to `person-N` from
/// `next_person` on, in their order, and returns the next free number. The grouping numbers new
/// persons after the highest id of the previous run only, which would hand out again the id of
/// a person that existed two runs ago.
pub fn number_new_persons(groups: &mut Groups, previous: Option<&Groups>, next_person: u64) -> u64 {
    let known: HashSet<&str> = previous
        .map(|p| p.persons.iter().map(|p| p.person_id.as_str()).collect())
        .unwrap_or_default();
    let highest_known = known
        .iter()
        .filter_map(|id| id.strip_prefix("person-")?.parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    let mut next = next_person.max(highest_known + 1).max(1);
    for p in &mut groups.persons {
        if !known.contains(p.person_id.as_str()) {
            p.person_id = format!("person-{next}");
            next += 1;
        }
    }
    next
}

/// The probe's faces: `persons` tight clusters of `per_person` faces, one face per photo,
/// around random (nearly orthogonal) 512-d centres; deterministic.
fn probe_faces() -> (Vec<FaceInput>, usize, usize) {
    const PERSONS: usize = 4;
    const PER_PERSON: usize = 10;
    const DIM: usize = 512;
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        // xorshift64*: uniform in [-1, 1).
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        let v = seed.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40;
        (v as f32 / (1u64 << 23) as f32) - 1.0
    };
    let centres: Vec<Vec<f32>> = (0..PERSONS)
        .map(|_| (0..DIM).map(|_| next()).collect())
        .collect();
    let mut faces = Vec::new();
    for (p, c) in centres.iter().enumerate() {
        for f in 0..PER_PERSON {
            faces.push(FaceInput {
                face_id: format!("probe-{p}-{f}"),
                image_id: format!("probe-image-{p}-{f}"),
                embedding: c.iter().map(|x| x + 0.3 * next()).collect(),
                quality_ok: true,
                quality: 1.0,
            });
        }
    }
    (faces, PERSONS, PER_PERSON)
}

#[cfg(test)]
mod tests {
    use super::*;
    use facegroup_core::Person;

    #[test]
    fn new_persons_continue_from_the_stored_number() {
        // person-7 existed in an earlier run but not in the previous one: a new person must not
        // get its id again.
        let previous = Groups {
            persons: vec![
                Person::with_faces("person-2", ["a"]),
                Person::with_faces("person-5", ["b"]),
            ],
            unassigned: vec![],
        };
        let mut groups = Groups {
            persons: vec![
                Person::with_faces("person-5", ["b", "c"]),
                Person::with_faces("person-6", ["d", "e"]),
                Person::with_faces("person-2", ["a"]),
                Person::with_faces("person-7", ["f", "g"]),
            ],
            unassigned: vec![],
        };
        let next = number_new_persons(&mut groups, Some(&previous), 8);
        let ids: Vec<&str> = groups
            .persons
            .iter()
            .map(|p| p.person_id.as_str())
            .collect();
        assert_eq!(ids, ["person-5", "person-8", "person-2", "person-9"]);
        assert_eq!(next, 10);
        // A first run starts at 1.
        let mut first = Groups {
            persons: vec![Person::with_faces("person-1", ["x"])],
            unassigned: vec![],
        };
        assert_eq!(number_new_persons(&mut first, None, 1), 2);
        assert_eq!(first.persons[0].person_id, "person-1");
    }

    #[test]
    fn probe_set_groups_into_its_persons() {
        let (faces, persons, per_person) = probe_faces();
        let groups = group(&faces, &GroupConfig::default(), None, None, None).expect("groups");
        let sizes: Vec<usize> = groups.persons.iter().map(|p| p.face_ids.len()).collect();
        assert_eq!(sizes, vec![per_person; persons]);
        assert!(groups.unassigned.is_empty());
    }

    #[test]
    fn faiss_errors_are_suspect_bad_data_permanent() {
        use facegroup_worker::ErrorClass;
        assert_eq!(
            classify(GroupError::Faiss("device lost".into())).class,
            ErrorClass::Suspect
        );
        assert_eq!(
            classify(GroupError::BadEmbedding {
                face_id: "f".into()
            })
            .class,
            ErrorClass::Permanent
        );
    }
}
