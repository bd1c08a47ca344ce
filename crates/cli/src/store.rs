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
//! - `corrections` / `person_names`: the user's merges, moves, not-this-person and names.
//!
//! Crash safety comes from transactions: the analysis of a batch of photos (their image rows
//! and all their faces) is committed at once, and a grouping replaces the persons in one
//! transaction. A run killed at any moment leaves whole batches; the next run sees the photos
//! of the lost batch as new and analyses them again, without duplicates (faces are keyed by
//! face id and replaced per image).

use std::collections::HashMap;
use std::path::Path;

use facegroup_core::group::{Groups, Person};
use facegroup_core::quality::Quality;
use facegroup_core::FaceRecord;
use rusqlite::{params, Connection, OptionalExtension, Transaction};

/// File name of the store inside the output folder.
pub const DB_FILE: &str = "facegroup.db";

/// Bumped whenever the tables change; a store of another version is refused, not guessed at.
pub const SCHEMA_VERSION: i64 = 1;

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
        match version {
            0 => {
                conn.execute_batch(SCHEMA).ctx("creating the tables")?;
                conn.pragma_update(None, "user_version", SCHEMA_VERSION)
                    .ctx("writing the schema version")?;
            }
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
    pub fn commit_batch(&mut self, batch: &[Analysed]) -> Result<()> {
        let tx = self.conn.transaction().ctx("starting a transaction")?;
        for image in batch {
            insert_image(&tx, image)?;
        }
        tx.commit().ctx("committing a batch")
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
            .prepare("SELECT person_id, representative FROM persons ORDER BY rank")
            .ctx("reading persons")?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .ctx("reading persons")?;
        let mut persons = Vec::new();
        for row in rows {
            let (person_id, representative) = row.ctx("reading persons")?;
            persons.push(Person {
                face_ids: members.remove(&person_id).unwrap_or_default(),
                person_id,
                representative,
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
            "INSERT INTO runs (finished_ms, analysed, unchanged, removed, group_mode) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                run.finished_ms,
                run.analysed as i64,
                run.unchanged as i64,
                run.removed as i64,
                run.group_mode
            ],
        )
        .ctx("recording the run")?;
        tx.commit().ctx("committing the run")
    }
}

impl Store {
    /// Records a correction and replaces the grouping by `groups` (the stored one with the
    /// correction applied), in one transaction.
    pub fn correct(&mut self, correction: &Correction, groups: &Groups) -> Result<()> {
        let tx = self.conn.transaction().ctx("starting a transaction")?;
        let (kind, subject, target) = correction.columns();
        tx.execute(
            "INSERT INTO corrections (kind, subject, target) VALUES (?1, ?2, ?3)",
            params![kind, subject, target],
        )
        .ctx("recording a correction")?;
        replace_groups(&tx, groups)?;
        tx.commit().ctx("committing a correction")
    }

    /// Every recorded correction, oldest first.
    pub fn corrections(&self) -> Result<Vec<Correction>> {
        let mut stmt = self
            .conn
            .prepare("SELECT kind, subject, target FROM corrections ORDER BY id")
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
        let mut out = Vec::new();
        for row in rows {
            let (kind, subject, target) = row.ctx("reading corrections")?;
            out.push(match kind.as_str() {
                "merge" => Correction::Merge {
                    into: subject,
                    from: target,
                },
                "move" => Correction::Move {
                    face: subject,
                    to: target,
                },
                "not" => Correction::Not {
                    face: subject,
                    person: target,
                },
                other => {
                    return Err(StoreError::Corrupt {
                        what: "correction",
                        detail: format!("unknown kind {other:?}"),
                    })
                }
            });
        }
        Ok(out)
    }

    /// Names a person (names are kept by person id, so they survive regrouping).
    pub fn name_person(&mut self, person: &str, name: &str) -> Result<()> {
        self.conn
            .execute(
                "INSERT INTO person_names (person_id, name) VALUES (?1, ?2) \
                 ON CONFLICT(person_id) DO UPDATE SET name = excluded.name",
                params![person, name],
            )
            .ctx("naming a person")?;
        Ok(())
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

/// A user's correction of the grouping (see [`crate::corrections`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Correction {
    /// Person `from` is the same as person `into`.
    Merge { into: String, from: String },
    /// Face `face` belongs to person `to`.
    Move { face: String, to: String },
    /// Face `face` is not person `person`.
    Not { face: String, person: String },
}

impl Correction {
    fn columns(&self) -> (&'static str, &str, &str) {
        match self {
            Correction::Merge { into, from } => ("merge", into, from),
            Correction::Move { face, to } => ("move", face, to),
            Correction::Not { face, person } => ("not", face, person),
        }
    }
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

fn insert_image(tx: &Transaction<'_>, image: &Analysed) -> Result<()> {
    tx.execute("DELETE FROM images WHERE path = ?1", [&image.name])
        .ctx("replacing an image")?;
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
    Ok(())
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
    fn hash_is_sha256_hex() {
        assert_eq!(
            content_hash(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
