//! Correction jobs (`{"type": "correction", "gallery_id", "action": ..., ...}`,
//! `docs/schemas/correction-job.schema.json`): a user's merge, move, "not this person", split or
//! name, consumed on the grouping queue under the gallery's lease like a deletion (never
//! coalesced; a held lease fails the job temporarily and it is retried).
//!
//! Under the lease the job reads the committed run and the gallery's stored corrections,
//! applies the correction to both (`facegroup_core::Corrections::apply`: only the persons it
//! names change, nothing is re-clustered), stores the touched persons' facts, and commits the
//! edited grouping as a new run under its lease token; then, like a grouping job, it writes the
//! person ids on the faces (fenced by the run number), `latest.json` and the `gallery.grouped`
//! event (to the configured SNS/EventBridge targets). Every later grouping
//! job reads the stored facts as constraints, so the correction holds across full and
//! incremental runs.
//!
//! Redelivery changes nothing: the facts are written before the commit, and applying the
//! correction again to the committed run (or, after a crash before the commit, to the run it
//! started from, with the facts already written) gives the same grouping and the same facts;
//! an unchanged grouping commits nothing. A correction naming a person or face that is not in
//! the committed grouping is refused (permanent) and changes nothing.

use facegroup_core::GroupMode;
use facegroup_core::Groups;
use facegroup_worker::gallery::{GroupingState, Lease, Rerun};
use facegroup_worker::jobs::{CorrectionJob, GroupingJob};
use facegroup_worker::{JobError, JobReport, Message};
use tracing::info;

use crate::handler::{Committed, GroupRun, GroupingHandler};

impl GroupingHandler {
    /// Runs a correction job (see the module docs).
    pub(crate) async fn correct(
        &self,
        msg: &Message,
        job: &CorrectionJob,
    ) -> Result<JobReport, JobError> {
        let gallery_id = &job.gallery_id;
        let (lease, state) = self.take_exclusive(msg, gallery_id, "correction").await?;
        let previous_run = state.committed.as_ref().map_or(0, |c| c.run_number);
        let (committed, rerun) = self
            .under_lease(&lease, self.correct_leased(job, &lease, state))
            .await?;
        // Past the release: fenced by the run number, like a grouping job's last steps.
        if let Some(c) = &committed {
            self.services
                .mongo
                .set_person_ids(&c.groups, c.run_number)
                .await?;
            self.galleries
                .mark_person_ids_written(gallery_id, c.run_number)
                .await?;
            self.write_latest(gallery_id, c).await?;
            self.delete_uncommitted_runs(gallery_id, previous_run, c.run_number)
                .await;
            // The persons changed: apps learn it as from any committed grouping (the
            // configured targets; a correction carries no callback).
            let as_job = GroupingJob {
                gallery_id: gallery_id.clone(),
                mode: GroupMode::Full,
                min_quality: None,
                callback: None,
            };
            self.announce(&as_job, c).await?;
        }
        if let Some(rerun) = rerun {
            self.follow_up(gallery_id, rerun).await?;
        }
        info!(gallery_id, correction = ?job.correction, changed = committed.is_some(), "correction applied");
        Ok(JobReport::default())
    }

    /// The part under the lease; ends with the lease released (by the commit or a release).
    async fn correct_leased(
        &self,
        job: &CorrectionJob,
        lease: &Lease,
        state: GroupingState,
    ) -> Result<(Option<Committed>, Option<Rerun>), JobError> {
        let g = &job.gallery_id;
        if state.deleted {
            info!(gallery_id = %g, "gallery was deleted; correction dropped");
            return Ok((None, self.galleries.release(lease).await?));
        }
        let Some(committed) = &state.committed else {
            return Err(JobError::permanent(format!(
                "gallery {g} has no committed grouping to correct"
            )));
        };
        let Some(run) = self
            .services
            .s3
            .get_json::<GroupRun>(&committed.key)
            .await?
        else {
            return Err(JobError::permanent(format!(
                "gallery {g}: committed run {} is missing",
                committed.key
            )));
        };
        let store = self.corrections();
        let mut book = store.load(g).await?;
        let before = Groups {
            persons: run.persons.clone(),
            unassigned: run.unassigned.clone(),
        };
        let mut groups = before.clone();
        let applied = book
            .apply(&job.correction, &mut groups, state.next_person)
            .map_err(|e| JobError::permanent(format!("gallery {g}: {e}")))?;
        book.label(&mut groups);
        store.save(g, &book, &applied.touched).await?;
        self.commit_edit(lease, &run, &before, groups, applied.next_person)
            .await
    }
}
