//! The user's corrections of the grouping: `facegroup person merge|name` and `facegroup face
//! move|not`, stored in the library store and applied again after every regrouping.
//!
//! The core grouping takes no constraints yet, so corrections are applied *after* it, in the
//! order they were made: a merge moves every face of one person into another, a move files a
//! face under a person, a not-this-person sends a face back to the unassigned ones. That is
//! honoured on every later run as long as the person ids a correction names still exist
//! (grouping keeps ids of persons that continue); a correction naming a person that a full
//! regroup dissolved does nothing. What is not honoured yet: the clustering itself does not
//! know the corrections (a not-this-person face is not kept from bridging two clusters, a merge
//! does not pull look-alike new faces). The corrections are recorded so that a core API with
//! must-link / cannot-link constraints can use them later. Names are kept by person id.

use std::path::PathBuf;

use anyhow::{bail, Result};
use facegroup_core::group::{Groups, Person};

use crate::store::{Correction, Store};

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
}

pub fn person(args: &PersonArgs) -> Result<()> {
    let mut store = open(args.out.as_ref())?;
    let groups = store.groups()?.unwrap_or_default();
    match &args.command {
        PersonCommand::Merge { a, b } => {
            require_person(&groups, a)?;
            require_person(&groups, b)?;
            if a == b {
                bail!("cannot merge {a} with itself");
            }
            correct(
                &mut store,
                groups,
                Correction::Merge {
                    into: a.clone(),
                    from: b.clone(),
                },
            )
        }
        PersonCommand::Name { a, name } => {
            require_person(&groups, a)?;
            store.name_person(a, name)?;
            println!("{a} is now named {name:?}");
            Ok(())
        }
    }
}

pub fn face(args: &FaceArgs) -> Result<()> {
    let mut store = open(args.out.as_ref())?;
    let groups = store.groups()?.unwrap_or_default();
    let (face, person, correction) = match &args.command {
        FaceCommand::Move { face, to } => (
            face,
            to,
            Correction::Move {
                face: face.clone(),
                to: to.clone(),
            },
        ),
        FaceCommand::Not { face, person } => (
            face,
            person,
            Correction::Not {
                face: face.clone(),
                person: person.clone(),
            },
        ),
    };
    require_person(&groups, person)?;
    let known = groups.unassigned.contains(face)
        || groups.persons.iter().any(|p| p.face_ids.contains(face));
    if !known {
        bail!("no face {face} in the store (face ids are in faces.jsonl)");
    }
    correct(&mut store, groups, correction)
}

/// Applies `corrections` in order to a fresh grouping.
pub fn apply_all(mut groups: Groups, corrections: &[Correction]) -> Groups {
    for c in corrections {
        groups = apply(groups, c);
    }
    groups
}

/// One correction; a correction naming a person or face that is not there does nothing.
pub fn apply(mut groups: Groups, correction: &Correction) -> Groups {
    let position = |g: &Groups, id: &str| g.persons.iter().position(|p| p.person_id == id);
    match correction {
        Correction::Merge { into, from } => {
            if let (Some(i), Some(j)) = (position(&groups, into), position(&groups, from)) {
                if i != j {
                    let moved = std::mem::take(&mut groups.persons[j].face_ids);
                    groups.persons[i].face_ids.extend(moved);
                    groups.persons[i].face_ids.sort();
                }
            }
        }
        Correction::Move { face, to } => {
            if let Some(i) = position(&groups, to) {
                let exists = take_face(&mut groups, face);
                if exists {
                    groups.persons[i].face_ids.push(face.clone());
                    groups.persons[i].face_ids.sort();
                }
            }
        }
        Correction::Not { face, person } => {
            if let Some(i) = position(&groups, person) {
                let before = groups.persons[i].face_ids.len();
                groups.persons[i].face_ids.retain(|f| f != face);
                if groups.persons[i].face_ids.len() < before {
                    groups.unassigned.push(face.clone());
                    groups.unassigned.sort();
                }
            }
        }
    }
    tidy(&mut groups);
    groups
}

fn correct(store: &mut Store, groups: Groups, correction: Correction) -> Result<()> {
    let corrected = apply(groups, &correction);
    store.correct(&correction, &corrected)?;
    println!(
        "recorded {correction:?}; run `facegroup export` or `facegroup run` to refresh the files"
    );
    Ok(())
}

fn open(out: Option<&PathBuf>) -> Result<Store> {
    let Some(out) = out else {
        bail!("--out OUT (the folder of an earlier `facegroup run`) is required");
    };
    Ok(Store::open_existing(out)?)
}

fn require_person(groups: &Groups, id: &str) -> Result<()> {
    if groups.persons.iter().any(|p| p.person_id == id) {
        Ok(())
    } else {
        bail!("no person {id} in the store (person ids are in groups.json)")
    }
}

/// Removes `face` from wherever it is; whether it was found.
fn take_face(groups: &mut Groups, face: &str) -> bool {
    let mut found = false;
    for p in &mut groups.persons {
        let before = p.face_ids.len();
        p.face_ids.retain(|f| f != face);
        found |= p.face_ids.len() < before;
    }
    let before = groups.unassigned.len();
    groups.unassigned.retain(|f| f != face);
    found | (groups.unassigned.len() < before)
}

/// Drops persons left empty and gives one that lost its representative its first face.
fn tidy(groups: &mut Groups) {
    groups.persons.retain(|p| !p.face_ids.is_empty());
    for Person {
        face_ids,
        representative,
        ..
    } in &mut groups.persons
    {
        if !face_ids.contains(representative) {
            if let Some(first) = face_ids.first() {
                *representative = first.clone();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corrections_move_faces_between_persons() {
        let groups = Groups {
            persons: vec![
                Person::with_faces("p1", ["a", "b"]),
                Person::with_faces("p2", ["c"]),
            ],
            unassigned: vec!["d".into()],
        };
        let merged = apply(
            groups.clone(),
            &Correction::Merge {
                into: "p1".into(),
                from: "p2".into(),
            },
        );
        assert_eq!(merged.persons.len(), 1);
        assert_eq!(merged.persons[0].face_ids, ["a", "b", "c"]);

        let moved = apply(
            groups.clone(),
            &Correction::Move {
                face: "d".into(),
                to: "p2".into(),
            },
        );
        assert_eq!(moved.persons[1].face_ids, ["c", "d"]);
        assert!(moved.unassigned.is_empty());

        let not = apply(
            groups.clone(),
            &Correction::Not {
                face: "a".into(),
                person: "p1".into(),
            },
        );
        assert_eq!(not.persons[0].face_ids, ["b"]);
        assert_eq!(not.persons[0].representative, "b");
        assert_eq!(not.unassigned, ["a", "d"]);

        // Naming a person that is gone changes nothing.
        let none = apply(
            groups.clone(),
            &Correction::Move {
                face: "d".into(),
                to: "p9".into(),
            },
        );
        assert_eq!(none, groups);
    }
}
