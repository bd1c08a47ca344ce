//! The user's corrections of the grouping: `facegroup person merge|name` and `facegroup face
//! move|not|split`. Their meaning is core's (`facegroup_core::group::corrections`, the same as
//! the grouping worker's correction jobs): each edits the stored grouping at once and records
//! facts per person in the store (confirmed faces, rejected faces, the name), and every later
//! `facegroup run` hands the facts to the grouping as must-link / cannot-link constraints, so a
//! merge is never undone, a rejected face never returns, a named person keeps its id and name.
//!
//! `facegroup run` also reads an optional `corrections.json` in the output folder: facts in
//! core's `Corrections` JSON (`{"persons": {"person-3": {"faces": [...], "not_faces": [...],
//! "name": "Ana"}}}`), added to the stored ones for that run (a way to bring corrections made
//! elsewhere, or to edit them by hand).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use facegroup_core::group::{Correction, Corrections, Groups};

use crate::store::Store;

/// File name of the optional facts file in the output folder.
pub const CORRECTIONS_FILE: &str = "corrections.json";

#[derive(Debug, clap::Args)]
pub struct PersonArgs {
    /// Output folder of an earlier `facegroup run` (holding facegroup.db).
    #[arg(long, short, env = "FACEGROUP_OUT", global = true)]
    pub out: Option<PathBuf>,
    #[command(subcommand)]
    pub command: PersonCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum PersonCommand {
    /// Person B is person A: B's faces move to A.
    Merge { a: String, b: String },
    /// Give person A a name.
    Name { a: String, name: String },
}

#[derive(Debug, clap::Args)]
pub struct FaceArgs {
    /// Output folder of an earlier `facegroup run` (holding facegroup.db).
    #[arg(long, short, env = "FACEGROUP_OUT", global = true)]
    pub out: Option<PathBuf>,
    #[command(subcommand)]
    pub command: FaceCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum FaceCommand {
    /// Face F belongs to person A.
    Move {
        face: String,
        #[arg(long)]
        to: String,
    },
    /// Face F is not person A.
    Not {
        face: String,
        #[arg(long)]
        person: String,
    },
    /// Face F is someone else: a new person of its own.
    Split { face: String },
}

pub fn person(args: &PersonArgs) -> Result<()> {
    let correction = match &args.command {
        PersonCommand::Merge { a, b } => Correction::Merge {
            into: a.clone(),
            from: vec![b.clone()],
        },
        PersonCommand::Name { a, name } => Correction::Name {
            person_id: a.clone(),
            name: name.clone(),
        },
    };
    correct(args.out.as_ref(), &correction)
}

pub fn face(args: &FaceArgs) -> Result<()> {
    let correction = match &args.command {
        FaceCommand::Move { face, to } => Correction::Move {
            face_id: face.clone(),
            to: to.clone(),
        },
        FaceCommand::Not { face, person } => Correction::NotPerson {
            face_id: face.clone(),
            person_id: person.clone(),
        },
        FaceCommand::Split { face } => Correction::Split {
            face_id: face.clone(),
        },
    };
    correct(args.out.as_ref(), &correction)
}

/// The facts a run groups under: the store's, plus those of `OUT/corrections.json` if there.
pub fn for_run(out: &Path, store: &Store) -> Result<Corrections> {
    let mut book = store.corrections()?;
    let path = out.join(CORRECTIONS_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(book),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let extra: Corrections = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a corrections file", path.display()))?;
    for (person, facts) in extra.persons {
        let mine = book.persons.entry(person).or_default();
        mine.faces.extend(facts.faces);
        mine.not_faces.extend(facts.not_faces);
        if facts.name.is_some() {
            mine.name = facts.name;
        }
    }
    Ok(book)
}

/// Applies `correction` to the stored grouping and facts (core's rules; it fails, recording
/// nothing, when it names a person or face the grouping does not have).
fn correct(out: Option<&PathBuf>, correction: &Correction) -> Result<()> {
    let Some(out) = out else {
        bail!("--out OUT (the folder of an earlier `facegroup run`) is required");
    };
    let mut store = Store::open_existing(out)?;
    let mut groups = store.groups()?.unwrap_or_default();
    let mut book = store.corrections()?;
    // Core takes a merge from a person that is gone as done before (a redelivered job); here
    // the user names the persons, so one that is not there is a mistake.
    if let Correction::Merge { from, .. } = correction {
        if let Some(gone) = from
            .iter()
            .find(|b| !groups.persons.iter().any(|p| &p.person_id == *b))
        {
            bail!("no person {gone} in the store (person ids are in groups.json)");
        }
    }
    let next = next_person_number(&groups, &book);
    let applied = book
        .apply(correction, &mut groups, next)
        .context("person ids are in groups.json, face ids in faces.jsonl")?;
    book.label(&mut groups);
    store.correct(&book, &applied.touched, &groups)?;
    println!(
        "recorded {correction:?}; run `facegroup export` or `facegroup run` to refresh the files"
    );
    Ok(())
}

/// The number after every `person-N` the grouping or the facts use (a split's new person).
fn next_person_number(groups: &Groups, book: &Corrections) -> u64 {
    groups
        .persons
        .iter()
        .map(|p| p.person_id.as_str())
        .chain(book.persons.keys().map(String::as_str))
        .filter_map(|id| id.strip_prefix("person-")?.parse::<u64>().ok())
        .max()
        .unwrap_or(0)
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use facegroup_core::group::Person;

    #[test]
    fn a_split_takes_the_number_after_every_known_person() {
        let groups = Groups {
            persons: vec![
                Person::with_faces("person-2", ["a"]),
                Person::with_faces("person-7", ["b"]),
            ],
            unassigned: vec![],
        };
        let mut book = Corrections::default();
        book.persons.insert("person-9".into(), Default::default());
        assert_eq!(next_person_number(&groups, &book), 10);
        assert_eq!(
            next_person_number(&Groups::default(), &Corrections::default()),
            1
        );
    }
}
