//! `facegroup find QUERY.jpg --out OUT`: which persons and photos of the library show the
//! people in a query photo.
//!
//! The query photo is analysed with the models the flags name (they must be the library's:
//! embeddings of other models are not comparable, so a mismatch is refused). Each query face is
//! compared with every stored face by cosine similarity (embeddings are unit length: a dot
//! product). A person ranks by its *best* face, not its centroid: a person's faces spread over
//! poses, ages and lighting, and a centroid is pulled towards the common ones, so a query in an
//! unusual pose would miss a person who has a matching photo; the best match is also what a
//! user can check, since it names the face. A photo ranks by its best face too. Only matches
//! at or above `--min-similarity` are listed (by default the grouping's pair threshold, the
//! similarity at which two single faces would be grouped as one person).

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use facegroup_core::group::GroupConfig;
use serde::Serialize;

use crate::args::EngineArgs;
use crate::engine::Engine;
use crate::output;
use crate::store::Store;

#[derive(Debug, clap::Args)]
pub struct FindArgs {
    /// The photo whose faces to look for.
    pub query: PathBuf,
    /// Output folder of an earlier `facegroup run` (holding facegroup.db).
    #[arg(long, short, env = "FACEGROUP_OUT")]
    pub out: PathBuf,
    /// Lowest cosine similarity listed [default: the grouping's pair threshold].
    #[arg(long)]
    pub min_similarity: Option<f32>,
    /// Most persons and photos listed per query face.
    #[arg(long, default_value_t = 10)]
    pub top: usize,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// The matches of one face of the query photo.
#[derive(Debug, Serialize)]
pub struct QueryFace {
    /// The face's index in the query photo (best detector score first).
    pub index: usize,
    /// `[x1, y1, x2, y2]` in pixels of the query photo.
    pub bbox: [f32; 4],
    pub persons: Vec<PersonMatch>,
    pub photos: Vec<PhotoMatch>,
}

/// A person and its face most similar to the query face.
#[derive(Debug, Serialize)]
pub struct PersonMatch {
    pub person_id: String,
    pub name: Option<String>,
    pub similarity: f32,
    pub face_id: String,
    pub faces: usize,
}

/// A photo and its face most similar to the query face.
#[derive(Debug, Serialize)]
pub struct PhotoMatch {
    pub image: String,
    pub similarity: f32,
    pub face_id: String,
    /// The person of that face; `None` when unassigned.
    pub person_id: Option<String>,
}

pub fn run(args: &FindArgs) -> Result<()> {
    let store = Store::open_existing(&args.out)?;
    let cfg = args.engine.to_config();
    let engine = Engine::new(&cfg)?;
    let faces = store.faces()?;
    if let Some(stored) = faces.first() {
        if stored.model_version != engine.model_version() {
            bail!(
                "the library's faces are of models {}, the flags name {}: use the run's models",
                stored.model_version,
                engine.model_version()
            );
        }
    }
    let result = engine
        .analyze(std::slice::from_ref(&args.query), |_, _| {})?
        .pop()
        .context("the query photo was not analysed")?;
    let analysed = result
        .outcome
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.query.display()))?;
    if analysed.faces.is_empty() {
        bail!("no face found in {}", args.query.display());
    }
    let groups = store.groups()?.unwrap_or_default();
    let person_of = output::person_of(Some(&groups));
    let sizes: HashMap<&str, usize> = groups
        .persons
        .iter()
        .map(|p| (p.person_id.as_str(), p.face_ids.len()))
        .collect();
    let names = store.person_names()?;
    let min = args
        .min_similarity
        .unwrap_or(GroupConfig::default().pair_threshold);

    let matches: Vec<QueryFace> = analysed
        .faces
        .iter()
        .map(|q| {
            let scored: Vec<(f32, &facegroup_core::FaceRecord)> = faces
                .iter()
                .map(|f| (dot(&q.embedding, &f.embedding), f))
                .filter(|(s, _)| *s >= min)
                .collect();
            let mut persons: HashMap<&str, (f32, &str)> = HashMap::new();
            let mut photos: HashMap<&str, (f32, &str)> = HashMap::new();
            for (s, f) in &scored {
                if let Some(p) = person_of.get(&f.face_id) {
                    keep_best(&mut persons, p, *s, &f.face_id);
                }
                keep_best(&mut photos, &f.image_id, *s, &f.face_id);
            }
            let b = &q.bbox;
            QueryFace {
                index: q.index,
                bbox: [b.x1, b.y1, b.x2, b.y2],
                persons: ranked(persons, args.top)
                    .into_iter()
                    .map(|(person, similarity, face)| PersonMatch {
                        name: names.get(person).cloned(),
                        faces: sizes.get(person).copied().unwrap_or(0),
                        person_id: person.to_string(),
                        similarity,
                        face_id: face.to_string(),
                    })
                    .collect(),
                photos: ranked(photos, args.top)
                    .into_iter()
                    .map(|(image, similarity, face)| PhotoMatch {
                        image: image.to_string(),
                        similarity,
                        person_id: person_of.get(face).cloned(),
                        face_id: face.to_string(),
                    })
                    .collect(),
            }
        })
        .collect();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&matches)?);
    } else {
        print_tables(&matches, min);
    }
    Ok(())
}

fn print_tables(matches: &[QueryFace], min: f32) {
    for q in matches {
        let [x1, y1, x2, y2] = q.bbox;
        println!(
            "query face {} at ({x1:.0}, {y1:.0})-({x2:.0}, {y2:.0}):",
            q.index
        );
        if q.persons.is_empty() && q.photos.is_empty() {
            println!("  no match at similarity >= {min:.2}");
            continue;
        }
        if q.persons.is_empty() {
            println!("  no person at similarity >= {min:.2} (only unassigned faces match)");
        } else {
            println!(
                "  {:>4}  {:>10}  {:<20} {:<20} {:>6}",
                "rank", "similarity", "person", "name", "faces"
            );
        }
        for (i, p) in q.persons.iter().enumerate() {
            println!(
                "  {:>4}  {:>10.3}  {:<20} {:<20} {:>6}",
                i + 1,
                p.similarity,
                p.person_id,
                p.name.as_deref().unwrap_or("-"),
                p.faces
            );
        }
        println!(
            "  {:>4}  {:>10}  {:<41} person",
            "rank", "similarity", "photo"
        );
        for (i, p) in q.photos.iter().enumerate() {
            println!(
                "  {:>4}  {:>10.3}  {:<41} {}",
                i + 1,
                p.similarity,
                p.image,
                p.person_id.as_deref().unwrap_or("-")
            );
        }
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Keeps, per key, the best similarity and the face that gave it.
fn keep_best<'a>(
    best: &mut HashMap<&'a str, (f32, &'a str)>,
    key: &'a str,
    similarity: f32,
    face: &'a str,
) {
    let entry = best.entry(key).or_insert((similarity, face));
    if similarity > entry.0 {
        *entry = (similarity, face);
    }
}

/// The `top` best, most similar first (ties by key, so the order is stable).
fn ranked<'a>(best: HashMap<&'a str, (f32, &'a str)>, top: usize) -> Vec<(&'a str, f32, &'a str)> {
    let mut v: Vec<(&str, f32, &str)> = best.into_iter().map(|(k, (s, f))| (k, s, f)).collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(b.0)));
    v.truncate(top);
    v
}
