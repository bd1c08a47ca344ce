//! Per-gallery grouping state in MongoDB (`huemn.galleries`, field `grouping`): which run is
//! committed, the next free person number, and a lease with a fencing token that lets only one
//! grouping job of a gallery run and commit at a time.
//!
//! # Why MongoDB and not an S3 pointer
//!
//! Without `s3:ListBucket` S3 answers a missing key with 403, indistinguishable from a real
//! denial; the stack grants ListBucket limited to each role's prefixes, but a deployment with a
//! stricter policy (or a bucket policy that denies listing) must not break grouping. The worker
//! therefore never reads a key that may not exist: the committed run's S3 key is stored here and is only written after the run JSON
//! itself was written, so the one S3 read a grouping job makes always hits an existing object.
//!
//! # Document layout (`huemn.galleries`, next to the trigger's `new_faces`/`grouping_pending`)
//!
//! ```text
//! grouping: {
//!   last_token:  u64                      // highest token ever handed out (= run number)
//!   lease:       {token, holder, expires_at}   // absent when nobody holds it
//!   rerun:       true                     // a job was coalesced into the current lease
//!   rerun_full:  true                     //   ... and one of them asked for a full regroup
//!   rerun_min_quality: 0.3                //   ... and the last one setting it, this quality
//!   committed:   {run_id, run_number, key, face_count, committed_at, summary_key?}
//!   person_ids_run: u64                   // highest run whose person ids are all on the faces
//!   next_person: u64                      // person-N numbers below this are used up
//!   commits:     [run_number, ...]        // the last 100 commits, in commit order
//!   purged_below: u64                     // run JSONs below this number were deleted
//! }
//! deleted_at: date                        // the gallery was deleted (a tombstone)
//! ```
//!
//! # Deletion jobs
//!
//! A deletion takes the lease like a grouping job but never coalesces: with the lease held it
//! fails temporarily and is retried ([`GalleryStore::acquire_exclusive`]), because it must run
//! itself. Grouping jobs arriving meanwhile coalesce into the deletion's lease as usual. A
//! gallery deletion marks the document deleted first ([`GalleryStore::mark_deleted`]) and
//! ends by replacing it with a tombstone that keeps only `deleted_at` and the run counters
//! ([`GalleryStore::finish_deletion`]).
//!
//! # The lease
//!
//! [`GalleryStore::acquire`] takes the lease when it is free, expired, or held by the same
//! message (a redelivery of a job whose worker died takes over at once instead of waiting for
//! the expiry). Taking it is a compare-and-set on `last_token`, so the token is strictly
//! increasing per gallery and doubles as the run number. The holder renews it every few seconds
//! ([`GalleryStore::renew`]); a renewal that finds another token means the lease was taken over
//! and the job must stop. Every write of the result is fenced by the token:
//! [`GalleryStore::commit`] only matches while `lease.token` is still the job's, and person ids
//! carry the run number (see `MongoStore::set_person_ids`), so a stale job can never overwrite a
//! newer run.
//!
//! # Coalescing instead of deferring
//!
//! A job that finds the lease held does not run and is not deferred by visibility: with 20
//! queued jobs for one gallery every deferral burns a receive count and the last ones would
//! reach the DLQ although nothing is wrong with them. Instead it records "rerun requested" on
//! the holder's lease (only while that lease is still held, so the request cannot land on a
//! released lease where nobody would see it) and its message is deleted. The holder, when it
//! commits, releases the lease and takes the rerun flag in the same atomic update, and sends one
//! follow-up grouping job if it was set: any number of coalesced requests cost one extra run,
//! and that run reads the faces after everything the requests were about. If the holder dies,
//! its own message is redelivered (its heartbeat stops) and regroups every face, which covers
//! the coalesced requests too; taking over by message id makes that redelivery run at once.
//! The one request that can be lost is a rerun flag left on a lease whose holder's message is
//! gone without a release (e.g. the release write failed after a permanent failure); the next
//! job of the gallery covers it.

use std::time::Duration;

use mongodb::bson::{doc, Bson, DateTime, Document};
use mongodb::options::ReturnDocument;
use mongodb::Collection;

use crate::error::{JobError, StoreError};
use crate::mongo::MongoStore;

/// How many commits the `grouping.commits` history keeps.
const HISTORY: i32 = 100;
/// Attempts of the compare-and-set in [`GalleryStore::acquire`] before it reports contention.
const CAS_ATTEMPTS: usize = 20;

/// Failure of a grouping-state operation.
#[derive(Debug, thiserror::Error)]
pub enum GalleryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Other jobs changed the lease on every attempt of the compare-and-set.
    #[error("gallery {0}: lease changed on each of {CAS_ATTEMPTS} attempts")]
    Contention(String),
}

impl From<mongodb::error::Error> for GalleryError {
    fn from(e: mongodb::error::Error) -> Self {
        GalleryError::Store(StoreError::Mongo(e))
    }
}

impl From<GalleryError> for JobError {
    /// Contention passes; store failures keep their class (malformed state is permanent).
    fn from(e: GalleryError) -> Self {
        match e {
            GalleryError::Store(StoreError::Malformed(m)) => {
                JobError::permanent(format!("grouping state: {m}"))
            }
            GalleryError::Store(s) => s.into(),
            GalleryError::Contention(_) => JobError::temporary(e.to_string()),
        }
    }
}

/// The grouping state of the galleries.
#[derive(Clone)]
pub struct GalleryStore {
    galleries: Collection<Document>,
}

/// A held lease. `token` is also the run number of the job's run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub gallery_id: String,
    pub token: u64,
    pub holder: String,
}

/// The committed run of a gallery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedRun {
    pub run_id: String,
    pub run_number: u64,
    /// S3 key of the run JSON (exists: it is written before the commit).
    pub key: String,
    pub face_count: u64,
    /// S3 key of the run's person summaries (`facegroup_core::group::incremental`), written
    /// before the commit like the run JSON; `None` for runs without them (edits, runs under
    /// corrections, runs written before summaries existed).
    pub summary_key: Option<String>,
}

/// What a job starts from: the committed run, if any, and the next free person number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupingState {
    pub committed: Option<CommittedRun>,
    /// Person numbers below this were handed out before; new persons start here (>= 1).
    pub next_person: u64,
    /// Run JSONs numbered below this were deleted by a deletion job (>= 1).
    pub purged_below: u64,
    /// The gallery was deleted.
    pub deleted: bool,
    /// The highest run whose person ids were all written onto the faces
    /// ([`GalleryStore::mark_person_ids_written`]); 0 when none. Only when it is the committed
    /// run do the faces' `person_run` fields tell new faces from grouped ones.
    pub person_ids_run: u64,
}

/// Outcome of [`GalleryStore::acquire`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquire {
    /// The job holds the lease and runs from `state`.
    Acquired { lease: Lease, state: GroupingState },
    /// Another job holds the lease; the request was recorded on it and the holder will run
    /// once more after it commits.
    Coalesced { holder_token: u64 },
}

/// Grouping requests coalesced into a lease, taken when the lease is released.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rerun {
    /// At least one of the requests asked for a full regroup.
    pub full: bool,
    /// The minimum quality the last request that set one asked for.
    pub min_quality: Option<f32>,
}

/// Outcome of [`GalleryStore::commit`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Commit {
    /// The run is committed and the lease released; `rerun` holds coalesced requests.
    Committed { rerun: Option<Rerun> },
    /// The lease was taken over by a newer job; nothing was written.
    Lost,
}

impl GalleryStore {
    pub fn new(mongo: &MongoStore) -> Self {
        Self {
            galleries: mongo.galleries().clone(),
        }
    }

    /// Takes the gallery's lease for the job of message `holder`, or coalesces the request into
    /// the current holder's lease (`full`: the request asks for a full regroup; `min_quality`:
    /// its own minimum quality, which the follow-up job carries).
    pub async fn acquire(
        &self,
        gallery_id: &str,
        holder: &str,
        ttl: Duration,
        full: bool,
        min_quality: Option<f32>,
    ) -> Result<Acquire, GalleryError> {
        self.take(gallery_id, holder, ttl, Some((full, min_quality)))
            .await
    }

    /// [`acquire`](Self::acquire); `coalesce` None: a held lease is reported as
    /// [`Acquire::Coalesced`] without recording anything on it.
    async fn take(
        &self,
        gallery_id: &str,
        holder: &str,
        ttl: Duration,
        coalesce: Option<(bool, Option<f32>)>,
    ) -> Result<Acquire, GalleryError> {
        // The compare-and-set below needs the document to exist; the trigger normally created it.
        self.galleries
            .update_one(
                doc! {"_id": gallery_id},
                doc! {"$setOnInsert": {"created_at": DateTime::now()}},
            )
            .upsert(true)
            .await?;
        for _ in 0..CAS_ATTEMPTS {
            let current = self
                .galleries
                .find_one(doc! {"_id": gallery_id})
                .await?
                .unwrap_or_default();
            let grouping = current.get_document("grouping").ok();
            let now = DateTime::now();
            let held = grouping
                .and_then(|g| g.get_document("lease").ok())
                .and_then(|l| {
                    let token = get_u64(l, "token")?;
                    let expires = l.get_datetime("expires_at").ok()?;
                    let same_job = l.get_str("holder").ok() == Some(holder);
                    (*expires > now && !same_job).then_some(token)
                });
            if let Some(token) = held {
                let Some((full, min_quality)) = coalesce else {
                    return Ok(Acquire::Coalesced {
                        holder_token: token,
                    });
                };
                let mut set = doc! {"grouping.rerun": true};
                if full {
                    set.insert("grouping.rerun_full", true);
                }
                if let Some(q) = min_quality {
                    set.insert("grouping.rerun_min_quality", f64::from(q));
                }
                let recorded = self
                    .galleries
                    .update_one(
                        doc! {"_id": gallery_id, "grouping.lease.token": token as i64},
                        doc! {"$set": set},
                    )
                    .await?;
                if recorded.matched_count == 1 {
                    return Ok(Acquire::Coalesced {
                        holder_token: token,
                    });
                }
                continue; // released or taken over meanwhile: look again
            }
            let seen = grouping.and_then(|g| get_u64(g, "last_token"));
            let token = seen.unwrap_or(0) + 1;
            let mut filter = doc! {"_id": gallery_id};
            match seen {
                Some(t) => filter.insert("grouping.last_token", t as i64),
                None => filter.insert("grouping.last_token", doc! {"$exists": false}),
            };
            // The lease must still be as seen: free, expired, or this job's own.
            filter.insert(
                "$or",
                vec![
                    Bson::Document(doc! {"grouping.lease": {"$exists": false}}),
                    Bson::Document(doc! {"grouping.lease.expires_at": {"$lte": now}}),
                    Bson::Document(doc! {"grouping.lease.holder": holder}),
                ],
            );
            let expires_at = DateTime::from_millis(now.timestamp_millis() + ttl_ms(ttl));
            let taken = self
                .galleries
                .find_one_and_update(
                    filter,
                    doc! {
                        "$set": {
                            "grouping.last_token": token as i64,
                            "grouping.lease": {"token": token as i64, "holder": holder,
                                               "expires_at": expires_at},
                            "updated_at": now,
                        },
                        // This job reads the faces after now, so it covers earlier requests.
                        "$unset": {"grouping.rerun": "", "grouping.rerun_full": "", "grouping.rerun_min_quality": ""},
                    },
                )
                .return_document(ReturnDocument::After)
                .await?;
            if let Some(after) = taken {
                return Ok(Acquire::Acquired {
                    lease: Lease {
                        gallery_id: gallery_id.to_string(),
                        token,
                        holder: holder.to_string(),
                    },
                    state: state_of(&after)?,
                });
            }
        }
        Err(GalleryError::Contention(gallery_id.to_string()))
    }

    /// Takes the lease for a deletion job: `Ok(None)` when another job holds it (nothing is
    /// recorded on that lease; the deletion is retried).
    pub async fn acquire_exclusive(
        &self,
        gallery_id: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<(Lease, GroupingState)>, GalleryError> {
        match self.take(gallery_id, holder, ttl, None).await? {
            Acquire::Acquired { lease, state } => Ok(Some((lease, state))),
            Acquire::Coalesced { .. } => Ok(None),
        }
    }

    /// Marks the gallery deleted (only while `lease` holds): from now on detection jobs of the
    /// gallery drop their image.
    pub async fn mark_deleted(&self, lease: &Lease) -> Result<bool, GalleryError> {
        let r = self
            .galleries
            .update_one(
                doc! {"_id": &lease.gallery_id, "grouping.lease.token": lease.token as i64},
                doc! {"$min": {"deleted_at": DateTime::now()}},
            )
            .await?;
        Ok(r.matched_count == 1)
    }

    /// Replaces the deleted gallery's document by its tombstone (`deleted_at`, `last_token`,
    /// `purged_below`) and so releases the lease. `Ok(false)`: the lease was lost first.
    pub async fn finish_deletion(&self, lease: &Lease) -> Result<bool, GalleryError> {
        let filter = doc! {"_id": &lease.gallery_id, "grouping.lease.token": lease.token as i64};
        let Some(current) = self.galleries.find_one(filter.clone()).await? else {
            return Ok(false);
        };
        let deleted_at = current
            .get_datetime("deleted_at")
            .copied()
            .unwrap_or_else(|_| DateTime::now());
        let token = lease.token as i64;
        let r = self
            .galleries
            .replace_one(
                filter,
                doc! {"_id": &lease.gallery_id, "deleted_at": deleted_at,
                "grouping": {"last_token": token, "purged_below": token + 1}},
            )
            .await?;
        Ok(r.matched_count == 1)
    }

    /// Records that the run JSONs below `below` are deleted.
    pub async fn set_purged_below(&self, gallery_id: &str, below: u64) -> Result<(), GalleryError> {
        self.galleries
            .update_one(
                doc! {"_id": gallery_id},
                doc! {"$max": {"grouping.purged_below": below as i64}},
            )
            .await?;
        Ok(())
    }

    /// Extends the lease by `ttl` from now. `Ok(false)`: the lease is no longer this job's.
    pub async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<bool, GalleryError> {
        let now = DateTime::now();
        let expires_at = DateTime::from_millis(now.timestamp_millis() + ttl_ms(ttl));
        let r = self
            .galleries
            .update_one(
                doc! {"_id": &lease.gallery_id, "grouping.lease.token": lease.token as i64},
                doc! {"$set": {"grouping.lease.expires_at": expires_at}},
            )
            .await?;
        Ok(r.matched_count == 1)
    }

    /// Commits `run` (whose JSON must already be in S3) as the gallery's current run, records
    /// the next free person number, releases the lease and takes the coalesced requests, all in
    /// one update that only matches while the lease is still this job's.
    pub async fn commit(
        &self,
        lease: &Lease,
        run: &CommittedRun,
        next_person: u64,
    ) -> Result<Commit, GalleryError> {
        let now = DateTime::now();
        let mut committed = doc! {
            "run_id": &run.run_id,
            "run_number": run.run_number as i64,
            "key": &run.key,
            "face_count": run.face_count as i64,
            "committed_at": now,
        };
        if let Some(key) = &run.summary_key {
            committed.insert("summary_key", key);
        }
        let before = self
            .galleries
            .find_one_and_update(
                doc! {"_id": &lease.gallery_id, "grouping.lease.token": lease.token as i64},
                doc! {
                    "$set": {
                        "grouping.committed": committed,
                        "grouping.next_person": next_person as i64,
                        "updated_at": now,
                    },
                    "$unset": {"grouping.lease": "", "grouping.rerun": "", "grouping.rerun_full": "", "grouping.rerun_min_quality": ""},
                    "$push": {"grouping.commits": {"$each": [run.run_number as i64], "$slice": -HISTORY}},
                },
            )
            .return_document(ReturnDocument::Before)
            .await?;
        Ok(match before {
            Some(d) => Commit::Committed {
                rerun: rerun_of(&d),
            },
            None => Commit::Lost,
        })
    }

    /// Releases the lease without committing (nothing to commit) and takes the coalesced
    /// requests. `None` also when the lease was no longer this job's.
    pub async fn release(&self, lease: &Lease) -> Result<Option<Rerun>, GalleryError> {
        let before = self
            .galleries
            .find_one_and_update(
                doc! {"_id": &lease.gallery_id, "grouping.lease.token": lease.token as i64},
                doc! {"$unset": {"grouping.lease": "", "grouping.rerun": "", "grouping.rerun_full": "", "grouping.rerun_min_quality": ""}},
            )
            .return_document(ReturnDocument::Before)
            .await?;
        Ok(before.as_ref().and_then(rerun_of))
    }

    /// Gives the lease up after a failure, leaving the coalesced requests for the retry of
    /// this job (which regroups everything) or the next holder.
    pub async fn abandon(&self, lease: &Lease) -> Result<(), GalleryError> {
        self.galleries
            .update_one(
                doc! {"_id": &lease.gallery_id, "grouping.lease.token": lease.token as i64},
                doc! {"$unset": {"grouping.lease": ""}},
            )
            .await?;
        Ok(())
    }

    /// Records that every person id of run `run_number` is on the faces (after
    /// `MongoStore::set_person_ids`); never moves backwards, so a slow older job cannot claim
    /// a newer run's writes.
    pub async fn mark_person_ids_written(
        &self,
        gallery_id: &str,
        run_number: u64,
    ) -> Result<(), GalleryError> {
        self.galleries
            .update_one(
                doc! {"_id": gallery_id},
                doc! {"$max": {"grouping.person_ids_run": run_number as i64}},
            )
            .await?;
        Ok(())
    }

    /// The gallery's current state (for readers and tests; jobs get it from `acquire`).
    pub async fn state(&self, gallery_id: &str) -> Result<GroupingState, GalleryError> {
        match self.galleries.find_one(doc! {"_id": gallery_id}).await? {
            Some(d) => Ok(state_of(&d)?),
            None => Ok(GroupingState::default()),
        }
    }

    /// Run numbers of the last commits, oldest first.
    pub async fn commit_history(&self, gallery_id: &str) -> Result<Vec<u64>, GalleryError> {
        let Some(d) = self.galleries.find_one(doc! {"_id": gallery_id}).await? else {
            return Ok(Vec::new());
        };
        let Ok(list) = d
            .get_document("grouping")
            .and_then(|g| g.get_array("commits"))
        else {
            return Ok(Vec::new());
        };
        list.iter()
            .map(|b| {
                bson_u64(b).ok_or_else(|| {
                    StoreError::Malformed(format!("gallery {gallery_id}: commit history")).into()
                })
            })
            .collect()
    }
}

impl Default for GroupingState {
    /// The state of a gallery that was never grouped.
    fn default() -> Self {
        Self {
            committed: None,
            next_person: 1,
            purged_below: 1,
            deleted: false,
            person_ids_run: 0,
        }
    }
}

fn state_of(d: &Document) -> Result<GroupingState, StoreError> {
    let deleted = d.get_datetime("deleted_at").is_ok();
    let Ok(g) = d.get_document("grouping") else {
        return Ok(GroupingState {
            deleted,
            ..GroupingState::default()
        });
    };
    let bad = |what: &str| StoreError::Malformed(format!("gallery {:?}: {what}", d.get("_id")));
    let committed = match g.get_document("committed") {
        Ok(c) => Some(CommittedRun {
            run_id: c
                .get_str("run_id")
                .map_err(|_| bad("committed.run_id"))?
                .to_string(),
            run_number: get_u64(c, "run_number").ok_or_else(|| bad("committed.run_number"))?,
            key: c
                .get_str("key")
                .map_err(|_| bad("committed.key"))?
                .to_string(),
            face_count: get_u64(c, "face_count").unwrap_or(0),
            summary_key: c.get_str("summary_key").ok().map(str::to_string),
        }),
        Err(_) => None,
    };
    Ok(GroupingState {
        committed,
        next_person: get_u64(g, "next_person").unwrap_or(1).max(1),
        purged_below: get_u64(g, "purged_below").unwrap_or(1).max(1),
        deleted,
        person_ids_run: get_u64(g, "person_ids_run").unwrap_or(0),
    })
}

fn rerun_of(d: &Document) -> Option<Rerun> {
    let g = d.get_document("grouping").ok()?;
    g.get_bool("rerun").unwrap_or(false).then(|| Rerun {
        full: g.get_bool("rerun_full").unwrap_or(false),
        min_quality: g.get_f64("rerun_min_quality").ok().map(|q| q as f32),
    })
}

fn get_u64(d: &Document, key: &str) -> Option<u64> {
    d.get(key).and_then(bson_u64)
}

/// Counters are written as i64; a driver may hand them back as i32 or f64.
fn bson_u64(b: &Bson) -> Option<u64> {
    match b {
        Bson::Int64(v) => u64::try_from(*v).ok(),
        Bson::Int32(v) => u64::try_from(*v).ok(),
        Bson::Double(v) if v.fract() == 0.0 && *v >= 0.0 => Some(*v as u64),
        _ => None,
    }
}

fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_defaults_and_parses() {
        let empty = state_of(&doc! {"_id": "g"}).expect("state");
        assert_eq!(empty.committed, None);
        assert_eq!(empty.next_person, 1);
        let d = doc! {"_id": "g", "grouping": {
            "committed": {"run_id": "r7", "run_number": 7_i64, "key": "groups/g/r7.json", "face_count": 3_i32},
            "next_person": 12_i64,
        }};
        let s = state_of(&d).expect("state");
        assert_eq!(
            s.committed,
            Some(CommittedRun {
                run_id: "r7".into(),
                run_number: 7,
                key: "groups/g/r7.json".into(),
                face_count: 3,
                summary_key: None,
            })
        );
        assert_eq!(s.next_person, 12);
        let broken = doc! {"_id": "g", "grouping": {"committed": {"run_id": "r"}}};
        assert!(matches!(state_of(&broken), Err(StoreError::Malformed(_))));
    }

    #[test]
    fn rerun_flags() {
        assert_eq!(rerun_of(&doc! {"grouping": {}}), None);
        assert_eq!(
            rerun_of(&doc! {"grouping": {"rerun": true}}),
            Some(Rerun {
                full: false,
                min_quality: None
            })
        );
        assert_eq!(
            rerun_of(&doc! {"grouping": {"rerun": true, "rerun_full": true}}),
            Some(Rerun {
                full: true,
                min_quality: None
            })
        );
    }
}
