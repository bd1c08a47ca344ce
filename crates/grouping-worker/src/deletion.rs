//! Deletion jobs (`{"type": "delete", "scope": "image" | "gallery" | "person", ...}`,
//! `docs/schemas/deletion-job.schema.json`), consumed on the grouping queue under the gallery's
//! lease. The lease orders a deletion against every grouping run of the gallery: no run can read
//! the faces before the deletion and commit after it. A deletion never coalesces into a held
//! lease; it fails temporarily and is retried (`GalleryStore::acquire_exclusive`).
//!
//! - **image**: the image is erased (`facegroup_worker::erase`: tombstone first, then its face
//!   thumbnails, faces and embeddings of every model version, its grouping-trigger count, its
//!   result JSON), then its faces are removed from the committed run;
//! - **person**: `faces: true` deletes the person's face thumbnails, faces and embeddings, drops
//!   them from the per-image result JSONs and from the committed run; `faces: false` only dissolves the
//!   person: its faces become unassigned. The id is retired either way (new persons are
//!   numbered from the stored next person number, which is already past it);
//! - **gallery**: the gallery document is marked deleted first, then every image of it becomes
//!   a tombstone, every face, thumbnail, result JSON, run JSON and `latest.json` is deleted, and the
//!   gallery document is replaced by a tombstone holding only `deleted_at` and the run counters.
//!
//! Each scope also erases what users said about the deleted faces and persons (their names,
//! confirmed and rejected faces: `facegroup_worker::corrections`).
//!
//! # Removing a person or image from the grouping
//!
//! The committed run is rewritten without the deleted faces (a person left without faces
//! disappears; a deleted representative is replaced by the person's first remaining face) and
//! committed as a new run under the deletion's lease token, so readers and the next grouping job
//! start from it; the person ids on the faces are rewritten with that run number. Then every
//! older run JSON (which may still hold the faces) is deleted: `grouping.purged_below` records
//! how far, so a later deletion only deletes the runs since. A later full regroup reads only the
//! faces that are left, so it cannot bring anything back.
//!
//! # The race with detection (the tombstone rule)
//!
//! Detection jobs do not take the lease. Instead: (1) a deletion writes the tombstone (the
//! image's, or the gallery's `deleted_at`) before it deletes anything; (2) a detection job checks
//! for a tombstone when it starts and drops the job (erasing what an earlier attempt may have
//! written); (3) just before its last write, the `done` status, it checks the gallery's
//! tombstone again, and that write only matches an image that is not a tombstone; finding
//! either tombstone, it erases what it wrote itself. So either the detection's last write came
//! before the tombstone, and then all its writes came before the deletion's erasure, which
//! removes them; or the detection sees the tombstone and removes them itself. (A gallery
//! deletion marks the gallery before it tombstones the images, so a detection that checked the
//! gallery too early meets its image's tombstone at `done`, or finished before it.) A grouping run in between cannot commit the faces of a deleted image
//! for long: its run holds the lease, so the deletion that wrote the tombstone runs after it
//! and rewrites its run.
//!
//! Every step is idempotent: a redelivered deletion finds the tombstones in place (they are
//! never rewritten), nothing left to delete and nothing to remove from the committed run.

use std::collections::BTreeMap;

use facegroup_core::Groups;
use facegroup_worker::erase::{erase_image, result_key, Prefixes};
use facegroup_worker::gallery::{GroupingState, Lease, Rerun};
use facegroup_worker::jobs::{DeletionJob, DeletionScope};
use facegroup_worker::mongo::image_key;
use facegroup_worker::{thumbs, JobError, JobReport, Message};
use tracing::info;

use crate::handler::{Committed, GroupRun, GroupingHandler};

/// What the leased part of a deletion leaves to do once the lease is released.
struct Deleted {
    /// The rewritten run, committed under the deletion's token.
    committed: Option<Committed>,
    /// Coalesced grouping requests, taken with the release.
    rerun: Option<Rerun>,
    /// Run JSONs below this number are to be deleted (0: none).
    purge_below: u64,
    purged_below: u64,
}

impl GroupingHandler {
    /// Runs a deletion job (see the module docs).
    pub(crate) async fn delete(
        &self,
        msg: &Message,
        job: &DeletionJob,
    ) -> Result<JobReport, JobError> {
        let gallery_id = &job.gallery_id;
        let (lease, state) = self.take_exclusive(msg, gallery_id, "deletion").await?;
        let done = self
            .under_lease(&lease, self.delete_leased(job, &lease, state))
            .await?;
        // Past the release: fenced by the run number, like a grouping job's last steps.
        if let Some(c) = &done.committed {
            self.services
                .mongo
                .set_person_ids(&c.groups, c.run_number)
                .await?;
            self.galleries
                .mark_person_ids_written(gallery_id, c.run_number)
                .await?;
            self.write_latest(gallery_id, c).await?;
        }
        if done.purge_below > done.purged_below {
            // The summaries hold the deleted faces' embeddings in their persons' sums.
            let keys: Vec<String> = (done.purged_below..done.purge_below)
                .flat_map(|n| [self.run_key(gallery_id, n), self.summary_key(gallery_id, n)])
                .collect();
            self.services.s3.delete_keys(&keys).await?;
            self.galleries
                .set_purged_below(gallery_id, done.purge_below)
                .await?;
        }
        if let Some(rerun) = done.rerun {
            self.follow_up(gallery_id, rerun).await?;
        }
        info!(gallery_id, scope = scope_name(&job.scope), "deletion done");
        Ok(JobReport::default())
    }

    /// The part of a deletion under the lease; ends with the lease released.
    async fn delete_leased(
        &self,
        job: &DeletionJob,
        lease: &Lease,
        state: GroupingState,
    ) -> Result<Deleted, JobError> {
        let g = &job.gallery_id;
        match &job.scope {
            DeletionScope::Gallery => self.delete_gallery(lease, &state).await,
            DeletionScope::Image { image_id } => {
                let faces = erase_image(
                    &self.services.mongo,
                    &self.services.s3,
                    Prefixes {
                        results: &self.results_prefix,
                        thumbnails: &self.thumbnails_prefix,
                    },
                    g,
                    image_id,
                )
                .await?;
                info!(gallery_id = %g, image_id = %image_id, faces, "image erased");
                let prefix = format!("{}:", image_key(g, image_id));
                self.corrections()
                    .forget_faces(g, |f| f.starts_with(&prefix))
                    .await?;
                self.commit_without(lease, state, |groups| {
                    redact(groups, |f| f.starts_with(&prefix), None)
                })
                .await
            }
            DeletionScope::Person { person_id, faces } => {
                let run = self.committed_run(&state).await?;
                let face_ids: Vec<String> = run
                    .as_ref()
                    .and_then(|r| r.persons.iter().find(|p| &p.person_id == person_id))
                    .map(|p| p.face_ids.clone())
                    .unwrap_or_default();
                // Its corrections go either way: a dissolved person's pin must not revive it.
                let corrections = self.corrections();
                corrections.forget_person(g, person_id).await?;
                if *faces {
                    // The faces MongoDB files under the person too (a run committed since),
                    // before their documents go: their ids name their thumbnails.
                    let mut doomed = self.services.mongo.person_face_ids(g, person_id).await?;
                    doomed.extend(face_ids.iter().cloned());
                    doomed.sort_unstable();
                    doomed.dedup();
                    corrections
                        .forget_faces(g, |f| {
                            doomed.binary_search_by(|d| d.as_str().cmp(f)).is_ok()
                        })
                        .await?;
                    thumbs::delete_faces(&self.services.s3, &self.thumbnails_prefix, &doomed)
                        .await?;
                    self.drop_from_result_jsons(g, &face_ids).await?;
                    let n = self
                        .services
                        .mongo
                        .delete_person_faces(g, person_id, &face_ids)
                        .await?;
                    info!(gallery_id = %g, person_id = %person_id, faces = n, "person's faces erased");
                    self.commit_without(lease, state, |groups| {
                        redact(groups, |f| face_ids.iter().any(|d| d == f), None)
                    })
                    .await
                } else {
                    let n = self.services.mongo.unassign_person(g, person_id).await?;
                    info!(gallery_id = %g, person_id = %person_id, faces = n, "person dissolved");
                    self.commit_without(lease, state, |groups| {
                        redact(groups, |_| false, Some(person_id))
                    })
                    .await
                }
            }
        }
    }

    /// Commits the committed run as changed by `change` (when it changes anything) under the
    /// deletion's token, releasing the lease; otherwise just releases it.
    async fn commit_without(
        &self,
        lease: &Lease,
        state: GroupingState,
        change: impl FnOnce(&Groups) -> Groups,
    ) -> Result<Deleted, JobError> {
        let previous = self.committed_run(&state).await?;
        let purged_below = state.purged_below;
        let Some(previous) = previous else {
            let rerun = self.galleries.release(lease).await?;
            return Ok(Deleted {
                committed: None,
                rerun,
                purge_below: state.committed.map_or(0, |c| c.run_number),
                purged_below,
            });
        };
        let before = Groups {
            persons: previous.persons.clone(),
            unassigned: previous.unassigned.clone(),
        };
        let groups = change(&before);
        let (committed, rerun) = self
            .commit_edit(lease, &previous, &before, groups, state.next_person)
            .await?;
        Ok(Deleted {
            purge_below: committed
                .as_ref()
                .map_or(previous.run_number, |c| c.run_number),
            committed,
            rerun,
            purged_below,
        })
    }

    /// The gallery deletion's leased part (see the module docs).
    async fn delete_gallery(
        &self,
        lease: &Lease,
        state: &GroupingState,
    ) -> Result<Deleted, JobError> {
        let g = &lease.gallery_id;
        let lost = || JobError::temporary(format!("gallery {g}: lease lost during deletion"));
        if !self.galleries.mark_deleted(lease).await? {
            return Err(lost());
        }
        let images = self.services.mongo.gallery_image_ids(g).await?;
        for image_id in &images {
            self.services.mongo.tombstone_image(g, image_id).await?;
        }
        let faces = self.services.mongo.delete_gallery_faces(g).await?;
        let thumbnails = self
            .services
            .s3
            .delete_prefix(&thumbs::gallery_prefix(&self.thumbnails_prefix, g))
            .await?;
        let mut keys: Vec<String> = images
            .iter()
            .map(|i| result_key(&self.results_prefix, g, i))
            .collect();
        keys.extend(
            (state.purged_below..lease.token)
                .flat_map(|n| [self.run_key(g, n), self.summary_key(g, n)]),
        );
        keys.push(format!("{}{g}/latest.json", self.groups_prefix));
        self.services.s3.delete_keys(&keys).await?;
        self.corrections().delete_gallery(g).await?;
        if !self.galleries.finish_deletion(lease).await? {
            return Err(lost());
        }
        info!(gallery_id = %g, images = images.len(), faces, thumbnails, "gallery erased");
        // Coalesced grouping requests of a deleted gallery have nothing left to group.
        Ok(Deleted {
            committed: None,
            rerun: None,
            purge_below: 0,
            purged_below: 0,
        })
    }

    /// The committed run's JSON, when there is one.
    async fn committed_run(&self, state: &GroupingState) -> Result<Option<GroupRun>, JobError> {
        match &state.committed {
            Some(c) => Ok(self.services.s3.get_json::<GroupRun>(&c.key).await?),
            None => Ok(None),
        }
    }

    /// Removes `face_ids` from the per-image result JSONs they appear in.
    async fn drop_from_result_jsons(
        &self,
        gallery_id: &str,
        face_ids: &[String],
    ) -> Result<(), JobError> {
        let scope = image_key(gallery_id, "");
        let mut by_image: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for f in face_ids {
            // `{gallery}/{image}:{model}:{index}` (facegroup_core::face_id); ids hold no `:`.
            if let Some(image) = f.split(':').next().and_then(|k| k.strip_prefix(&scope)) {
                by_image.entry(image).or_default().push(f);
            }
        }
        for (image_id, ids) in by_image {
            let key = result_key(&self.results_prefix, gallery_id, image_id);
            let Some(mut doc) = self.services.s3.get_json::<serde_json::Value>(&key).await? else {
                continue;
            };
            if let Some(faces) = doc.get_mut("faces").and_then(|f| f.as_array_mut()) {
                faces.retain(|f| !ids.iter().any(|id| f["face_id"] == *id));
            }
            self.services.s3.put_json(&key, &doc).await?;
        }
        Ok(())
    }

    /// `{groups prefix}{gallery}/summaries/run-{N}.bin` (`facegroup_worker::summaries`).
    pub(crate) fn summary_key(&self, gallery_id: &str, run_number: u64) -> String {
        facegroup_worker::summaries::summary_key(&self.groups_prefix, gallery_id, run_number)
    }

    /// `{groups prefix}{gallery}/run-{N}.json`.
    pub(crate) fn run_key(&self, gallery_id: &str, run_number: u64) -> String {
        format!(
            "{}{gallery_id}/run-{run_number:010}.json",
            self.groups_prefix
        )
    }
}

/// `groups` without the faces `drop` selects, and with person `dissolve` (if any) turned into
/// unassigned faces. Persons left without faces disappear; a dropped representative is replaced
/// by the person's first remaining face.
fn redact(groups: &Groups, drop: impl Fn(&str) -> bool, dissolve: Option<&str>) -> Groups {
    let mut out = Groups {
        persons: Vec::new(),
        unassigned: groups
            .unassigned
            .iter()
            .filter(|f| !drop(f))
            .cloned()
            .collect(),
    };
    for p in &groups.persons {
        let faces: Vec<String> = p.face_ids.iter().filter(|f| !drop(f)).cloned().collect();
        if Some(p.person_id.as_str()) == dissolve {
            out.unassigned.extend(faces);
            continue;
        }
        let Some(first) = faces.first() else {
            continue;
        };
        let mut person = p.clone();
        if drop(&p.representative) {
            person.representative = first.clone();
        }
        person.face_ids = faces;
        out.persons.push(person);
    }
    out
}

fn scope_name(scope: &DeletionScope) -> &'static str {
    match scope {
        DeletionScope::Image { .. } => "image",
        DeletionScope::Gallery => "gallery",
        DeletionScope::Person { .. } => "person",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use facegroup_core::Person;

    fn person(id: &str, faces: &[&str]) -> Person {
        Person::with_faces(id, faces.iter().copied())
    }

    #[test]
    fn redaction_drops_faces_and_dissolves_persons() {
        let groups = Groups {
            persons: vec![
                person("person-1", &["a", "b"]),
                person("person-2", &["c"]),
                person("person-3", &["d", "e"]),
            ],
            unassigned: vec!["f".into(), "a2".into()],
        };
        let out = redact(
            &groups,
            |f| f.starts_with('a') || f == "c",
            Some("person-3"),
        );
        assert_eq!(out.persons, vec![person("person-1", &["b"])]);
        assert_eq!(out.unassigned, ["f", "d", "e"]);
        // Nothing selected: unchanged (a redelivered deletion commits nothing).
        assert_eq!(redact(&groups, |_| false, None), groups);
    }
}
