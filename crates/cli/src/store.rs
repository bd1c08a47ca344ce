//! The library store: one SQLite file (`OUT/facegroup.db`, WAL mode) holding what `facegroup
//! run` learnt about a photo folder, so that a re-run only analyses what changed and a killed
//! run resumes where it stopped.
//!
//! - `images`: one row per photo (relative path, size, mtime, content hash, model version,
//!   status and error, pixel size);
//! - `faces`: one row per face, the fields of `facegroup_core::FaceRecord`, the embedding as a
//!   little-endian `f32` blob (2 KB per face instead of ~7 KB of JSON);
//! - `persons` / `person_faces`: the current grouping, in the order `facegroup_core::group`
//!   returned it, so it can be handed back as the previous grouping of the next run;
//! - `runs`: one row per finished run (what was analysed, kept, forgotten, how it was grouped);
//! - `person_facts` / `person_names`: what the user's corrections established per person
//!   (`facegroup_core::Corrections`: confirmed faces, rejected faces, names), handed to every
//!   grouping as constraints;
//! - `forgotten_images` / `forgotten_faces` / `forgotten_persons`: tombstones of what the user
//!   asked to forget ([`crate::forget`]): a photo's path, size, mtime and content hash, a
//!   forgotten face's photo, hash and box, a person's id. They hold no face data (no crop, no
//!   embedding, no keypoints), only what is needed to keep later runs from bringing it back.
//!
//! Crash safety comes from transactions: the analysis of a batch of photos (their image rows
//! and all their faces) is committed at once, and a grouping replaces the persons in one
//! transaction. A run killed at any moment leaves whole batches; the next run sees the photos
//! of the lost batch as new and analyses them again, without duplicates (faces are keyed by
//! face id and replaced per image).

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use facegroup_core::group::{Corrections, Groups, Person};
use facegroup_core::quality::Quality;
use facegroup_core::FaceRecord;
use rusqlite::{params, Connection, OptionalExtension, Transaction};

/// File name of the store inside the output folder.
pub const DB_FILE: &str = "facegroup.db";

/// Bumped whenever the tables change; a store of another version is refused, not guessed at.
/// Version 1 stores (no tombstones, no run details) are upgraded in place.
/// Version 2 stores (a log of corrections instead of their facts) are upgraded in place too.
pub const SCHEMA_VERSION: i64 = 3;

/// Store failures, each naming what was being done.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{what}: {source}")]
    Sql {
        what: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("{path} has schema version {found}, this facegroup reads version {SCHEMA_VERSION} (use another --out folder)")]
    Version { path: String, found: i64 },
    #[error("{path} not found: run `facegroup run PHOTOS --out OUT` first")]
    Missing { path: String },
    #[error("corrupt {what} in the store: {detail}")]
    Corrupt { what: &'static str, detail: String },
}

type Result<T> = std::result::Result<T, StoreError>;

/// Attaches a description to a rusqlite result.
trait Ctx<T> {
    fn ctx(self, what: &'static str) -> Result<T>;
}

impl<T> Ctx<T> for rusqlite::Result<T> {
    fn ctx(self, what: &'static str) -> Result<T> {
        self.map_err(|source| StoreError::Sql { what, source })
    }
}

/// What the store knows of one photo file, to decide whether it changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileState {
    pub size: u64,
    /// Modification time in nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// Hex SHA-256 of the content.
    pub hash: String,
    pub model_version: String,
}

/// One photo as stored, with its faces in index order.
#[derive(Debug, Clone)]
pub struct StoredImage {
    /// Path relative to the photo folder, `/`-separated.
    pub name: String,
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// `None` for an analysed image, the reason for a failed one.
    pub error: Option<String>,
    pub faces: Vec<FaceRecord>,
}

/// The analysis of one photo, ready to be committed.
#[derive(Debug)]
pub struct Analysed {
    pub name: String,
    pub file: FileState,
    /// Pixel size, or the reason the photo could not be used.
    pub outcome: std::result::Result<(u32, u32), String>,
    pub faces: Vec<FaceRecord>,
}

/// An open store.
pub struct Store {
    conn: Connection,
}

impl Store {
    /// Opens (creating if needed) the store in `out_dir`.
    pub fn open(out_dir: &Path) -> Result<Self> {
        let path = out_dir.join(DB_FILE);
        let conn = Connection::open(&path).ctx("opening the store")?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .ctx("switching the store to WAL")?;
        // WAL with synchronous=NORMAL is still atomic per transaction (a crash loses at most
        // the last commits, never half of one), which is all resuming needs.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .ctx("setting synchronous")?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .ctx("enabling foreign keys")?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .ctx("reading the schema version")?;
        let upgrade = |sql: &str| {
            conn.execute_batch(&format!(
                "BEGIN; {sql} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
            ))
        };
        match version {
            0 => upgrade(&format!("{SCHEMA}{SCHEMA_2}{SCHEMA_3}")).ctx("creating the tables")?,
            1 => {
                upgrade(&format!("{SCHEMA_2}{SCHEMA_3}")).ctx("upgrading the store to version 3")?
            }
            2 => upgrade(SCHEMA_3).ctx("upgrading the store to version 3")?,
            SCHEMA_VERSION => {}
            found => {
                return Err(StoreError::Version {
                    path: path.display().to_string(),
                    found,
                })
            }
        }
        Ok(Self { conn })
    }

    /// Opens the store of an earlier run; unlike [`Store::open`] a missing store is an error,
    /// since the commands that only read or correct it would otherwise hide a wrong `--out`.
    pub fn open_existing(out_dir: &Path) -> Result<Self> {
        let path = out_dir.join(DB_FILE);
        if !path.is_file() {
            return Err(StoreError::Missing {
                path: path.display().to_string(),
            });
        }
        Self::open(out_dir)
    }

    /// The file state of every stored photo, by relative name.
    pub fn file_states(&self) -> Result<HashMap<String, FileState>> {
        let mut stmt = self
            .conn
            .prepare("SELECT path, size, mtime_ns, hash, model_version FROM images")
            .ctx("reading images")?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    FileState {
                        size: r.get::<_, i64>(1)? as u64,
                        mtime_ns: r.get(2)?,
                        hash: r.get(3)?,
                        model_version: r.get(4)?,
                    },
                ))
            })
            .ctx("reading images")?;
        rows.collect::<rusqlite::Result<_>>().ctx("reading images")
    }

    /// Records a new size and mtime for photos whose content (hash) did not change.
    pub fn touch(&mut self, files: &[(String, FileState)]) -> Result<()> {
        let tx = self.conn.transaction().ctx("starting a transaction")?;
        {
            let mut stmt = tx
                .prepare_cached("UPDATE images SET size = ?2, mtime_ns = ?3 WHERE path = ?1")
                .ctx("updating file times")?;
            for (name, f) in files {
                stmt.execute(params![name, f.size as i64, f.mtime_ns])
                    .ctx("updating file times")?;
            }
        }
        tx.commit().ctx("committing file times")
    }

    /// Forgets photos (and their faces) that are no longer in the folder.
    pub fn forget(&mut self, names: &[String]) -> Result<()> {
        let tx = self.conn.transaction().ctx("starting a transaction")?;
        {
            let mut stmt = tx
                .prepare_cached("DELETE FROM images WHERE path = ?1")
                .ctx("forgetting images")?;
            for name in names {
                stmt.execute([name]).ctx("forgetting images")?;
            }
        }
        tx.commit().ctx("committing forgotten images")
    }

    /// Stores a batch of analysed photos in one transaction, replacing what was stored of them.
    /// Faces the user forgot (same photo content, overlapping box) are left out; their
    /// `(photo, face index)` are returned so the caller can delete the crops it wrote.
    pub fn commit_batch(&mut self, batch: &[Analysed]) -> Result<Vec<(String, u32)>> {
        let tx = self.conn.transaction().ctx("starting a transaction")?;
        let mut suppressed = Vec::new();
        for image in batch {
            suppressed.extend(insert_image(&tx, image)?);
        }
        tx.commit().ctx("committing a batch")?;
        Ok(suppressed)
    }

    /// Every stored photo with its faces, sorted by name.
    pub fn images(&self) -> Result<Vec<StoredImage>> {
        let mut faces: HashMap<String, Vec<FaceRecord>> = HashMap::new();
        for face in self.faces()? {
            faces.entry(face.image_id.clone()).or_default().push(face);
        }
        let mut stmt = self
            .conn
            .prepare("SELECT path, width, height, error FROM images ORDER BY path")
            .ctx("reading images")?;
        let rows = stmt
            .query_map([], |r| {
                Ok(StoredImage {
                    name: r.get(0)?,
                    width: r.get(1)?,
                    height: r.get(2)?,
                    error: r.get(3)?,
                    faces: Vec::new(),
                })
            })
            .ctx("reading images")?;
        let mut images = rows
            .collect::<rusqlite::Result<Vec<_>>>()
            .ctx("reading images")?;
        for image in &mut images {
            image.faces = faces.remove(&image.name).unwrap_or_default();
        }
        Ok(images)
    }

    /// Every stored face, by image name then index.
    pub fn faces(&self) -> Result<Vec<FaceRecord>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT face_id, image_path, model_version, idx, bbox, landmarks, score, quality, \
                 embedding FROM faces ORDER BY image_path, idx",
            )
            .ctx("reading faces")?;
        let rows = stmt
            .query_map([], |r| {
                Ok(RawFace {
                    face_id: r.get(0)?,
                    image_id: r.get(1)?,
                    model_version: r.get(2)?,
                    index: r.get(3)?,
                    bbox: r.get(4)?,
                    landmarks: r.get(5)?,
                    score: r.get(6)?,
                    quality: r.get(7)?,
                    embedding: r.get(8)?,
                })
            })
            .ctx("reading faces")?;
        rows.map(|raw| raw.ctx("reading faces").and_then(RawFace::decode))
            .collect()
    }

    /// The stored grouping, `None` before the first one.
    pub fn groups(&self) -> Result<Option<Groups>> {
        let grouped: Option<i64> = self
            .conn
            .query_row(
                "SELECT id FROM runs WHERE group_mode IS NOT NULL ORDER BY id DESC LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()
            .ctx("reading runs")?;
        if grouped.is_none() {
            return Ok(None);
        }
        let mut members: HashMap<String, Vec<String>> = HashMap::new();
        {
            let mut stmt = self
                .conn
                .prepare("SELECT person_id, face_id FROM person_faces ORDER BY face_id")
                .ctx("reading person faces")?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
                .ctx("reading person faces")?;
            for row in rows {
                let (person, face) = row.ctx("reading person faces")?;
                members.entry(person).or_default().push(face);
            }
        }
        let mut stmt = self
            .conn
            .prepare(
                "SELECT p.person_id, p.representative, n.name FROM persons p \
                 LEFT JOIN person_names n ON n.person_id = p.person_id ORDER BY p.rank",
            )
            .ctx("reading persons")?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<String>>(2)?,
                ))
            })
            .ctx("reading persons")?;
        let mut persons = Vec::new();
        for row in rows {
            let (person_id, representative, name) = row.ctx("reading persons")?;
            persons.push(Person {
                face_ids: members.remove(&person_id).unwrap_or_default(),
                person_id,
                representative,
                name,
            });
        }
        let mut stmt = self
            .conn
            .prepare(
                "SELECT face_id FROM faces WHERE face_id NOT IN (SELECT face_id FROM person_faces) \
                 ORDER BY face_id",
            )
            .ctx("reading unassigned faces")?;
        let unassigned = stmt
            .query_map([], |r| r.get(0))
            .ctx("reading unassigned faces")?
            .collect::<rusqlite::Result<Vec<String>>>()
            .ctx("reading unassigned faces")?;
        Ok(Some(Groups {
            persons,
            unassigned,
        }))
    }

    /// Replaces the grouping and records the finished run, in one transaction.
    pub fn finish_run(&mut self, run: &RunRecord, groups: Option<&Groups>) -> Result<()> {
        let tx = self.conn.transaction().ctx("starting a transaction")?;
        if let Some(groups) = groups {
            replace_groups(&tx, groups)?;
        }
        tx.execute(
            "INSERT INTO runs (finished_ms, analysed, unchanged, removed, group_mode, photos_dir, \
             detector, embedder, model_version, seconds) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                run.finished_ms,
                run.analysed as i64,
                run.unchanged as i64,
                run.removed as i64,
                run.group_mode,
                run.details.photos_dir,
                run.details.detector,
                run.details.embedder,
                run.details.model_version,
                run.details.seconds
            ],
        )
        .ctx("recording the run")?;
        tx.commit().ctx("committing the run")
    }
}

impl Store {
    /// Stores the facts of the persons in `touched` as `book` holds them and replaces the
    /// grouping by `groups` (the stored one with the correction applied), in one transaction.
    pub fn correct(
        &mut self,
        book: &Corrections,
        touched: &BTreeSet<String>,
        groups: &Groups,
    ) -> Result<()> {
        let tx = self.conn.transaction().ctx("starting a transaction")?;
        for person in touched {
            tx.execute("DELETE FROM person_facts WHERE person_id = ?1", [person])
                .ctx("recording a correction")?;
            tx.execute("DELETE FROM person_names WHERE person_id = ?1", [person])
                .ctx("recording a correction")?;
            let Some(facts) = book.persons.get(person) else {
                continue;
            };
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO person_facts (person_id, face_id, kind) VALUES (?1, ?2, ?3)",
                )
                .ctx("recording a correction")?;
            for (faces, kind) in [(&facts.faces, "face"), (&facts.not_faces, "not")] {
                for face in faces {
                    insert
                        .execute(params![person, face, kind])
                        .ctx("recording a correction")?;
                }
            }
            if let Some(name) = &facts.name {
                tx.execute(
                    "INSERT INTO person_names (person_id, name) VALUES (?1, ?2)",
                    params![person, name],
                )
                .ctx("recording a correction")?;
            }
        }
        replace_groups(&tx, groups)?;
        tx.commit().ctx("committing a correction")
    }

    /// What the user's corrections established: every person's confirmed and rejected faces
    /// and its name.
    pub fn corrections(&self) -> Result<Corrections> {
        let mut book = Corrections::default();
        let mut stmt = self
            .conn
            .prepare("SELECT person_id, face_id, kind FROM person_facts ORDER BY person_id")
            .ctx("reading corrections")?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })
            .ctx("reading corrections")?;
        for row in rows {
            let (person, face, kind) = row.ctx("reading corrections")?;
            let facts = book.persons.entry(person).or_default();
            match kind.as_str() {
                "face" => facts.faces.insert(face),
                _ => facts.not_faces.insert(face),
            };
        }
        for (person, name) in self.person_names()? {
            if let Some(facts) = book.persons.get_mut(&person) {
                facts.name = Some(name);
            }
        }
        Ok(book)
    }

    /// person id -> name.
    pub fn person_names(&self) -> Result<HashMap<String, String>> {
        let mut stmt = self
            .conn
            .prepare("SELECT person_id, name FROM person_names")
            .ctx("reading names")?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .ctx("reading names")?;
        rows.collect::<rusqlite::Result<_>>().ctx("reading names")
    }
}

/// A photo's tombstone: what identifies the file, nothing of its faces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tombstone {
    pub size: u64,
    pub mtime_ns: i64,
    /// Hex SHA-256 of the content that was forgotten.
    pub hash: String,
}

/// What [`Store::forget_image`] and [`Store::forget_person`] removed.
#[derive(Debug, Default)]
pub struct Forgotten {
    /// `(photo, face index)` of every face deleted, for its crop.
    pub faces: Vec<(String, u32)>,
}

impl Store {
    /// The details of the last finished run, `None` before the first.
    pub fn last_run(&self) -> Result<Option<RunDetails>> {
        self.conn
            .query_row(
                "SELECT COALESCE(photos_dir, ''), COALESCE(detector, ''), COALESCE(embedder, ''), \
                 COALESCE(model_version, ''), COALESCE(seconds, 0) FROM runs \
                 ORDER BY id DESC LIMIT 1",
                [],
                |r| {
                    Ok(RunDetails {
                        photos_dir: r.get(0)?,
                        detector: r.get(1)?,
                        embedder: r.get(2)?,
                        model_version: r.get(3)?,
                        seconds: r.get(4)?,
                    })
                },
            )
            .optional()
            .ctx("reading runs")
    }

    /// Tombstones of forgotten photos, by relative name.
    pub fn forgotten_images(&self) -> Result<HashMap<String, Tombstone>> {
        let mut stmt = self
            .conn
            .prepare("SELECT path, size, mtime_ns, hash FROM forgotten_images")
            .ctx("reading forgotten images")?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    Tombstone {
                        size: r.get::<_, i64>(1)? as u64,
                        mtime_ns: r.get(2)?,
                        hash: r.get(3)?,
                    },
                ))
            })
            .ctx("reading forgotten images")?;
        rows.collect::<rusqlite::Result<_>>()
            .ctx("reading forgotten images")
    }

    /// Records a new size and mtime for forgotten photos whose content did not change.
    pub fn touch_forgotten(&mut self, files: &[(String, Tombstone)]) -> Result<()> {
        let tx = self.conn.transaction().ctx("starting a transaction")?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "UPDATE forgotten_images SET size = ?2, mtime_ns = ?3 WHERE path = ?1",
                )
                .ctx("updating forgotten file times")?;
            for (name, t) in files {
                stmt.execute(params![name, t.size as i64, t.mtime_ns])
                    .ctx("updating forgotten file times")?;
            }
        }
        tx.commit().ctx("committing forgotten file times")
    }

    /// Whether `person` was forgotten (and is not a person of the current grouping).
    pub fn is_forgotten_person(&self, person: &str) -> Result<bool> {
        self.conn
            .query_row(
                "SELECT 1 FROM forgotten_persons WHERE person_id = ?1",
                [person],
                |_| Ok(()),
            )
            .optional()
            .map(|found| found.is_some())
            .ctx("reading forgotten persons")
    }

    /// Forgets a stored photo in one transaction: its row, its faces (boxes, keypoints,
    /// embeddings), the corrections naming them and their place in the grouping go, replaced
    /// by a tombstone. `groups` is the stored grouping without the photo's faces. `None` when
    /// no such photo is stored.
    pub fn forget_image(
        &mut self,
        name: &str,
        groups: Option<&Groups>,
    ) -> Result<Option<Forgotten>> {
        let tx = self.conn.transaction().ctx("starting a transaction")?;
        let tombstone = tx
            .query_row(
                "SELECT size, mtime_ns, hash FROM images WHERE path = ?1",
                [name],
                |r| {
                    Ok(Tombstone {
                        size: r.get::<_, i64>(0)? as u64,
                        mtime_ns: r.get(1)?,
                        hash: r.get(2)?,
                    })
                },
            )
            .optional()
            .ctx("reading an image")?;
        let Some(tombstone) = tombstone else {
            return Ok(None);
        };
        let faces = faces_where(&tx, "f.image_path = ?1", name)?;
        for face in &faces {
            delete_face(&tx, &face.face_id)?;
        }
        tx.execute("DELETE FROM images WHERE path = ?1", [name])
            .ctx("forgetting an image")?;
        tx.execute("DELETE FROM forgotten_faces WHERE image_path = ?1", [name])
            .ctx("forgetting an image")?;
        tx.execute(
            "INSERT OR REPLACE INTO forgotten_images (path, size, mtime_ns, hash) \
             VALUES (?1, ?2, ?3, ?4)",
            params![
                name,
                tombstone.size as i64,
                tombstone.mtime_ns,
                tombstone.hash
            ],
        )
        .ctx("writing a tombstone")?;
        if let Some(groups) = groups {
            replace_groups(&tx, groups)?;
        }
        tx.commit().ctx("committing a forgotten image")?;
        Ok(Some(Forgotten {
            faces: faces.into_iter().map(|f| (f.image, f.index)).collect(),
        }))
    }

    /// Forgets a person in one transaction: its faces (each leaving a tombstone of photo, hash
    /// and box so a re-analysis of the same photo leaves it out), the corrections naming it or
    /// its faces, its name. `groups` is the stored grouping without the person.
    pub fn forget_person(&mut self, person: &str, groups: &Groups) -> Result<Forgotten> {
        let tx = self.conn.transaction().ctx("starting a transaction")?;
        let faces = faces_where(
            &tx,
            "f.face_id IN (SELECT face_id FROM person_faces WHERE person_id = ?1)",
            person,
        )?;
        {
            let mut tombstone = tx
                .prepare_cached(
                    "INSERT INTO forgotten_faces (image_path, hash, bbox) VALUES (?1, ?2, ?3)",
                )
                .ctx("writing a face tombstone")?;
            for face in &faces {
                tombstone
                    .execute(params![face.image, face.hash, face.bbox])
                    .ctx("writing a face tombstone")?;
                delete_face(&tx, &face.face_id)?;
            }
        }
        tx.execute("DELETE FROM person_facts WHERE person_id = ?1", [person])
            .ctx("forgetting corrections")?;
        tx.execute("DELETE FROM person_names WHERE person_id = ?1", [person])
            .ctx("forgetting a name")?;
        tx.execute(
            "INSERT OR IGNORE INTO forgotten_persons (person_id) VALUES (?1)",
            [person],
        )
        .ctx("writing a person tombstone")?;
        replace_groups(&tx, groups)?;
        tx.commit().ctx("committing a forgotten person")?;
        Ok(Forgotten {
            faces: faces.into_iter().map(|f| (f.image, f.index)).collect(),
        })
    }

    /// Drops the tombstones of a photo (its own and its faces') and its stored analysis, so
    /// the next run analyses it afresh. Whether there was anything to drop.
    pub fn restore_image(&mut self, name: &str) -> Result<bool> {
        let tx = self.conn.transaction().ctx("starting a transaction")?;
        let mut changed = tx
            .execute("DELETE FROM forgotten_images WHERE path = ?1", [name])
            .ctx("restoring an image")?;
        let faces = tx
            .execute("DELETE FROM forgotten_faces WHERE image_path = ?1", [name])
            .ctx("restoring an image")?;
        if faces > 0 {
            changed += faces;
            for face in faces_where(&tx, "f.image_path = ?1", name)? {
                delete_face(&tx, &face.face_id)?;
            }
            tx.execute("DELETE FROM images WHERE path = ?1", [name])
                .ctx("restoring an image")?;
        }
        tx.commit().ctx("committing a restored image")?;
        Ok(changed > 0)
    }
}

/// A face about to be forgotten: what its tombstone and crop need.
struct FaceKey {
    face_id: String,
    image: String,
    index: u32,
    hash: String,
    bbox: String,
}

/// The faces matching `condition` (on `faces f`, with one parameter `?1`), with their photo's hash.
fn faces_where(tx: &Transaction<'_>, condition: &str, param: &str) -> Result<Vec<FaceKey>> {
    let mut stmt = tx
        .prepare(&format!(
            "SELECT f.face_id, f.image_path, f.idx, i.hash, f.bbox FROM faces f \
             JOIN images i ON i.path = f.image_path WHERE {condition} ORDER BY f.image_path, f.idx"
        ))
        .ctx("reading faces")?;
    let rows = stmt
        .query_map([param], |r| {
            Ok(FaceKey {
                face_id: r.get(0)?,
                image: r.get(1)?,
                index: r.get(2)?,
                hash: r.get(3)?,
                bbox: r.get(4)?,
            })
        })
        .ctx("reading faces")?;
    rows.collect::<rusqlite::Result<_>>().ctx("reading faces")
}

/// Deletes a face row with its grouping membership and the corrections naming it.
fn delete_face(tx: &Transaction<'_>, face_id: &str) -> Result<()> {
    tx.execute("DELETE FROM person_facts WHERE face_id = ?1", [face_id])
        .ctx("forgetting corrections")?;
    tx.execute("DELETE FROM person_faces WHERE face_id = ?1", [face_id])
        .ctx("forgetting a face")?;
    tx.execute("DELETE FROM faces WHERE face_id = ?1", [face_id])
        .ctx("forgetting a face")?;
    Ok(())
}

fn replace_groups(tx: &Transaction<'_>, groups: &Groups) -> Result<()> {
    tx.execute_batch("DELETE FROM person_faces; DELETE FROM persons;")
        .ctx("clearing persons")?;
    let mut person = tx
        .prepare_cached("INSERT INTO persons (person_id, rank, representative) VALUES (?1, ?2, ?3)")
        .ctx("writing persons")?;
    let mut member = tx
        .prepare_cached("INSERT INTO person_faces (face_id, person_id) VALUES (?1, ?2)")
        .ctx("writing person faces")?;
    for (rank, p) in groups.persons.iter().enumerate() {
        person
            .execute(params![p.person_id, rank as i64, p.representative])
            .ctx("writing persons")?;
        for face in &p.face_ids {
            member
                .execute(params![face, p.person_id])
                .ctx("writing person faces")?;
        }
    }
    Ok(())
}

/// A finished run as recorded in `runs`.
#[derive(Debug, Clone)]
pub struct RunRecord {
    pub finished_ms: i64,
    pub analysed: usize,
    pub unchanged: usize,
    pub removed: usize,
    /// `full` or `incremental`; `None` when the grouping was kept as it was.
    pub group_mode: Option<&'static str>,
    pub details: RunDetails,
}

/// What the report header shows of a run, kept so commands run later (forget) can write the
/// report again.
#[derive(Debug, Clone, Default)]
pub struct RunDetails {
    /// The photo folder (absolute when it could be resolved); the report links the photos there.
    pub photos_dir: String,
    /// Model file names and the version face ids are built with.
    pub detector: String,
    pub embedder: String,
    pub model_version: String,
    pub seconds: f64,
}

/// Hex SHA-256 of a file's content.
pub fn content_hash(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

const SCHEMA: &str = "
CREATE TABLE images (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    hash TEXT NOT NULL,
    model_version TEXT NOT NULL,
    width INTEGER,
    height INTEGER,
    status TEXT NOT NULL CHECK (status IN ('ok', 'failed')),
    error TEXT
);
CREATE TABLE faces (
    face_id TEXT PRIMARY KEY,
    image_path TEXT NOT NULL REFERENCES images(path) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    model_version TEXT NOT NULL,
    bbox TEXT NOT NULL,
    landmarks TEXT NOT NULL,
    score REAL NOT NULL,
    quality TEXT NOT NULL,
    embedding BLOB NOT NULL
);
CREATE INDEX faces_by_image ON faces(image_path, idx);
CREATE TABLE persons (
    person_id TEXT PRIMARY KEY,
    rank INTEGER NOT NULL,
    representative TEXT NOT NULL
);
CREATE TABLE person_faces (
    face_id TEXT PRIMARY KEY,
    person_id TEXT NOT NULL REFERENCES persons(person_id) ON DELETE CASCADE
);
CREATE TABLE runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    finished_ms INTEGER NOT NULL,
    analysed INTEGER NOT NULL,
    unchanged INTEGER NOT NULL,
    removed INTEGER NOT NULL,
    group_mode TEXT
);
CREATE TABLE corrections (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL CHECK (kind IN ('merge', 'move', 'not')),
    subject TEXT NOT NULL,
    target TEXT NOT NULL
);
CREATE TABLE person_names (
    person_id TEXT PRIMARY KEY,
    name TEXT NOT NULL
);
";

/// Version 2: tombstones and the details of each run.
const SCHEMA_2: &str = "
CREATE TABLE forgotten_images (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    hash TEXT NOT NULL
);
CREATE TABLE forgotten_faces (
    image_path TEXT NOT NULL,
    hash TEXT NOT NULL,
    bbox TEXT NOT NULL
);
CREATE INDEX forgotten_faces_by_image ON forgotten_faces(image_path);
CREATE TABLE forgotten_persons (
    person_id TEXT PRIMARY KEY
);
ALTER TABLE runs ADD COLUMN photos_dir TEXT;
ALTER TABLE runs ADD COLUMN detector TEXT;
ALTER TABLE runs ADD COLUMN embedder TEXT;
ALTER TABLE runs ADD COLUMN model_version TEXT;
ALTER TABLE runs ADD COLUMN seconds REAL;
";

/// Version 3: the facts of the corrections instead of their log. A version 2 log converts
/// without loss of meaning, because the stored grouping already has every logged correction
/// applied: a not-this-person becomes a rejected face, and every person a correction named
/// (merged into, moved to, rejected from, named) is anchored with its current faces.
const SCHEMA_3: &str = "
CREATE TABLE person_facts (
    person_id TEXT NOT NULL,
    face_id TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('face', 'not')),
    PRIMARY KEY (person_id, face_id, kind)
);
CREATE INDEX person_facts_by_face ON person_facts(face_id);
INSERT OR IGNORE INTO person_facts (person_id, face_id, kind)
    SELECT target, subject, 'not' FROM corrections WHERE kind = 'not';
INSERT OR IGNORE INTO person_facts (person_id, face_id, kind)
    SELECT person_id, face_id, 'face' FROM person_faces WHERE person_id IN (
        SELECT target FROM corrections WHERE kind = 'move'
        UNION SELECT subject FROM corrections WHERE kind = 'merge'
        UNION SELECT target FROM corrections WHERE kind = 'not'
        UNION SELECT person_id FROM person_names);
DROP TABLE corrections;
";

/// Writes one analysed photo; returns the `(photo, index)` of the faces left out as forgotten.
fn insert_image(tx: &Transaction<'_>, image: &Analysed) -> Result<Vec<(String, u32)>> {
    tx.execute("DELETE FROM images WHERE path = ?1", [&image.name])
        .ctx("replacing an image")?;
    // Analysed again means changed or asked for: a photo tombstone no longer applies, and face
    // tombstones only while the content is the one they were made for.
    tx.execute(
        "DELETE FROM forgotten_images WHERE path = ?1",
        [&image.name],
    )
    .ctx("replacing an image")?;
    tx.execute(
        "DELETE FROM forgotten_faces WHERE image_path = ?1 AND hash != ?2",
        [&image.name, &image.file.hash],
    )
    .ctx("replacing an image")?;
    let forgotten: Vec<[f32; 4]> = {
        let mut stmt = tx
            .prepare_cached("SELECT bbox FROM forgotten_faces WHERE image_path = ?1")
            .ctx("reading forgotten faces")?;
        let rows = stmt
            .query_map([&image.name], |r| r.get::<_, String>(0))
            .ctx("reading forgotten faces")?;
        let mut boxes = Vec::new();
        for row in rows {
            let text = row.ctx("reading forgotten faces")?;
            boxes.push(
                serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
                    what: "forgotten face box",
                    detail: e.to_string(),
                })?,
            );
        }
        boxes
    };
    let mut suppressed = Vec::new();
    let (width, height, status, error) = match &image.outcome {
        Ok((w, h)) => (Some(*w), Some(*h), "ok", None),
        Err(e) => (None, None, "failed", Some(e.as_str())),
    };
    tx.prepare_cached(
        "INSERT INTO images (path, size, mtime_ns, hash, model_version, width, height, status, \
         error) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )
    .ctx("writing an image")?
    .execute(params![
        image.name,
        image.file.size as i64,
        image.file.mtime_ns,
        image.file.hash,
        image.file.model_version,
        width,
        height,
        status,
        error
    ])
    .ctx("writing an image")?;
    let mut stmt = tx
        .prepare_cached(
            "INSERT INTO faces (face_id, image_path, idx, model_version, bbox, landmarks, score, \
             quality, embedding) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )
        .ctx("writing a face")?;
    for f in &image.faces {
        if forgotten.iter().any(|b| same_face(b, &f.bbox)) {
            suppressed.push((image.name.clone(), f.index));
            continue;
        }
        stmt.execute(params![
            f.face_id,
            image.name,
            f.index,
            f.model_version,
            to_json(&f.bbox)?,
            to_json(&f.landmarks)?,
            f.score,
            to_json(&f.quality)?,
            embedding_blob(&f.embedding),
        ])
        .ctx("writing a face")?;
    }
    Ok(suppressed)
}

/// Whether two boxes in the same photo show the same face: more than half overlap
/// (intersection over union), so a re-analysis with other models still recognises it.
fn same_face(a: &[f32; 4], b: &[f32; 4]) -> bool {
    let to_box = |v: &[f32; 4]| facegroup_core::BBox {
        x1: v[0],
        y1: v[1],
        x2: v[2],
        y2: v[3],
    };
    to_box(a).iou(&to_box(b)) > 0.5
}

fn to_json(value: &impl serde::Serialize) -> Result<String> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt {
        what: "face field",
        detail: e.to_string(),
    })
}

fn embedding_blob(embedding: &[f32]) -> Vec<u8> {
    embedding.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn embedding_from_blob(blob: &[u8]) -> Result<Vec<f32>> {
    if !blob.len().is_multiple_of(4) {
        return Err(StoreError::Corrupt {
            what: "embedding",
            detail: format!("{} bytes is not a whole number of f32", blob.len()),
        });
    }
    Ok(blob
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// A `faces` row before its JSON and blob columns are decoded.
struct RawFace {
    face_id: String,
    image_id: String,
    model_version: String,
    index: u32,
    bbox: String,
    landmarks: String,
    score: f32,
    quality: String,
    embedding: Vec<u8>,
}

impl RawFace {
    fn decode(self) -> Result<FaceRecord> {
        let corrupt = |what: &'static str| {
            let id = self.face_id.clone();
            move |e: serde_json::Error| StoreError::Corrupt {
                what,
                detail: format!("{id}: {e}"),
            }
        };
        let bbox: [f32; 4] = serde_json::from_str(&self.bbox).map_err(corrupt("bbox"))?;
        let landmarks: [[f32; 2]; 5] =
            serde_json::from_str(&self.landmarks).map_err(corrupt("landmarks"))?;
        let quality: Quality = serde_json::from_str(&self.quality).map_err(corrupt("quality"))?;
        Ok(FaceRecord {
            embedding: embedding_from_blob(&self.embedding)?,
            face_id: self.face_id,
            image_id: self.image_id,
            model_version: self.model_version,
            index: self.index,
            bbox,
            landmarks,
            score: self.score,
            quality,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embeddings_round_trip_exactly() {
        let e = vec![0.1f32, -2.5, f32::MIN_POSITIVE, 1.0 / 3.0];
        let blob = embedding_blob(&e);
        assert_eq!(blob.len(), 16);
        assert_eq!(&blob[4..8], &(-2.5f32).to_le_bytes());
        assert_eq!(embedding_from_blob(&blob).ok(), Some(e));
        assert!(embedding_from_blob(&blob[..5]).is_err());
    }

    #[test]
    fn a_version_1_store_is_upgraded_in_place() {
        let dir = facegroup_testkit::TempDir::new("store-v1");
        {
            let conn = Connection::open(dir.path().join(DB_FILE)).expect("create");
            conn.execute_batch(SCHEMA).expect("version 1 tables");
            conn.execute(
                "INSERT INTO runs (finished_ms, analysed, unchanged, removed) VALUES (1, 0, 0, 0)",
                [],
            )
            .expect("a run");
            conn.pragma_update(None, "user_version", 1)
                .expect("version");
        }
        let store = Store::open(dir.path()).expect("upgraded");
        let version: i64 = store
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .expect("version");
        assert_eq!(version, SCHEMA_VERSION);
        assert!(store.forgotten_images().expect("tombstones").is_empty());
        let last = store.last_run().expect("runs").expect("the old run");
        assert_eq!(last.photos_dir, "");
        drop(store);
        // Opening again leaves it as it is.
        assert!(Store::open(dir.path()).is_ok());
    }

    #[test]
    fn a_version_2_log_of_corrections_becomes_their_facts() {
        let dir = facegroup_testkit::TempDir::new("store-v2");
        {
            let conn = Connection::open(dir.path().join(DB_FILE)).expect("create");
            conn.execute_batch(&format!("{SCHEMA}{SCHEMA_2}"))
                .expect("version 2 tables");
            // The stored grouping already has the logged corrections applied.
            conn.execute_batch(
                "INSERT INTO persons VALUES ('person-1', 0, 'a'), ('person-2', 1, 'c'), \
                   ('person-3', 2, 'e');
                 INSERT INTO person_faces VALUES ('a', 'person-1'), ('b', 'person-1'), \
                   ('c', 'person-2'), ('e', 'person-3');
                 INSERT INTO corrections (kind, subject, target) VALUES \
                   ('merge', 'person-1', 'person-9'), ('not', 'd', 'person-2');
                 INSERT INTO person_names VALUES ('person-3', 'Ana');
                 PRAGMA user_version = 2;",
            )
            .expect("a version 2 store");
        }
        let store = Store::open(dir.path()).expect("upgraded");
        let book = store.corrections().expect("facts");
        let faces = |p: &str| book.persons[p].faces.iter().cloned().collect::<Vec<_>>();
        assert_eq!(faces("person-1"), ["a", "b"], "merged into: anchored");
        assert_eq!(faces("person-2"), ["c"], "rejected from: anchored");
        assert!(book.persons["person-2"].not_faces.contains("d"));
        assert_eq!(faces("person-3"), ["e"], "named: anchored");
        assert_eq!(book.persons["person-3"].name.as_deref(), Some("Ana"));
        assert_eq!(book.persons.len(), 3);
    }

    #[test]
    fn forgotten_boxes_match_the_same_face_only() {
        let face = [100.0, 100.0, 200.0, 220.0];
        assert!(same_face(&face, &[105.0, 98.0, 203.0, 215.0]));
        assert!(!same_face(&face, &[180.0, 100.0, 280.0, 220.0]));
        assert!(!same_face(&face, &[400.0, 400.0, 500.0, 520.0]));
    }

    #[test]
    fn hash_is_sha256_hex() {
        assert_eq!(
            content_hash(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
