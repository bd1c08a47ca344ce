//! User corrections of a gallery's persons, and what they leave behind for every later grouping:
//! the one definition of what "merge these persons", "this face is her", "this face is not
//! her", "this face is someone else" and "she is Ana" mean, used by the grouping worker's
//! correction messages and by the CLI.
//!
//! A correction does two things, both in [`Corrections::apply`]:
//!
//! 1. it edits the committed grouping directly (only the persons it names change, nothing is
//!    re-clustered), and
//! 2. it records **facts** per person ([`PersonFacts`]): the faces the user confirmed as the
//!    person, the faces the user said are not the person, and its name. A person the user
//!    touched is *anchored*: all its faces at that moment become confirmed, because the user
//!    looked at the person and acted on it (the way gallery apps treat a person a user has
//!    curated: later runs add to it, they do not take it apart).
//!
//! [`Corrections::constraints`] turns the facts into the core grouping's [`Constraints`]: each
//! anchored person is a must-link group pinned to its person id (so it keeps its id and name
//! across full regroups, and two anchored persons never merge), and each rejected face is
//! cannot-linked with the person's confirmed faces. Every later full or incremental grouping
//! takes them, so corrections stick.
//!
//! # Idempotence
//!
//! Applying a correction again to its own result changes nothing, and applying it again to the
//! grouping it started from gives the same result even when the facts were already updated (a
//! redelivery after a crash between storing the facts and committing the run). A split is the
//! one correction that creates something (a person id); it takes the next free number, which
//! only advances when the run commits, and a face that is already alone in a person anchored
//! to it alone is not split again.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{Constraints, Groups, MustLink, Person};

/// One user correction (`action` in JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Correction {
    /// Persons `from` are person `into`: their faces join it and their ids are retired.
    Merge { into: String, from: Vec<String> },
    /// Face `face_id` is person `to` (and so not the person that held it).
    Move { face_id: String, to: String },
    /// Face `face_id` is not person `person_id`: it leaves the person, unassigned.
    NotPerson { face_id: String, person_id: String },
    /// Face `face_id` is someone else: a new person of its own.
    Split { face_id: String },
    /// Person `person_id` is called `name`.
    Name { person_id: String, name: String },
}

/// What the user said about one person.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PersonFacts {
    /// Faces confirmed as this person: must-link, pinned to the person id.
    pub faces: BTreeSet<String>,
    /// Faces that are not this person: cannot-link with [`faces`](Self::faces).
    pub not_faces: BTreeSet<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// The facts of a gallery, by person id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Corrections {
    pub persons: BTreeMap<String, PersonFacts>,
}

/// What [`Corrections::apply`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Persons whose facts changed, were added or were removed (the ones to store again).
    pub touched: BTreeSet<String>,
    /// The next free person number after the correction (a split takes one).
    pub next_person: u64,
}

/// A correction that cannot be applied (permanent: it names what is not there).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CorrectionError {
    #[error("no person {0:?} in the committed grouping")]
    UnknownPerson(String),
    #[error("no face {0:?} in the committed grouping")]
    UnknownFace(String),
    #[error("invalid correction: {0}")]
    Invalid(String),
}

/// Longest accepted person name, in characters.
pub const MAX_NAME_CHARS: usize = 200;
/// How many of a person's confirmed faces a rejected face is cannot-linked with: they are one
/// cluster (must-link), so one would do; a few survive the deletion of some of them.
const CANNOT_LINK_FANOUT: usize = 4;

impl Corrections {
    /// Applies `c` to `groups` (the committed grouping) and records its facts; `next_person`
    /// is the gallery's next free person number. On error nothing changed.
    pub fn apply(
        &mut self,
        c: &Correction,
        groups: &mut Groups,
        next_person: u64,
    ) -> Result<Applied, CorrectionError> {
        let before = self.persons.clone();
        let mut next = next_person.max(1);
        match c {
            Correction::Merge { into, from } => self.merge(groups, into, from)?,
            Correction::Move { face_id, to } => self.move_face(groups, face_id, to)?,
            Correction::NotPerson { face_id, person_id } => {
                self.not_person(groups, face_id, person_id)?
            }
            Correction::Split { face_id } => self.split(groups, face_id, &mut next)?,
            Correction::Name { person_id, name } => {
                let name = name.trim();
                if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
                    return Err(CorrectionError::Invalid(format!(
                        "a name has 1 to {MAX_NAME_CHARS} characters"
                    )));
                }
                holder_index(groups, person_id)?;
                self.anchor(groups, person_id).name = Some(name.to_string());
            }
        }
        let touched = changed_keys(&before, &self.persons);
        Ok(Applied {
            touched,
            next_person: next,
        })
    }

    /// The constraints every later grouping of the gallery takes (see the module docs).
    pub fn constraints(&self) -> Constraints {
        let mut out = Constraints::default();
        for (person_id, facts) in &self.persons {
            if facts.faces.is_empty() {
                continue;
            }
            out.must_link.push(MustLink {
                face_ids: facts.faces.iter().cloned().collect(),
                person_id: Some(person_id.clone()),
            });
            for not in &facts.not_faces {
                for face in facts.faces.iter().take(CANNOT_LINK_FANOUT) {
                    out.cannot_link.push((not.clone(), face.clone()));
                }
            }
        }
        out
    }

    /// Gives the persons of `groups` their names.
    pub fn label(&self, groups: &mut Groups) {
        for p in &mut groups.persons {
            p.name = self.persons.get(&p.person_id).and_then(|f| f.name.clone());
        }
    }

    /// Forgets the faces `gone` selects (they were deleted); persons left without confirmed
    /// faces are forgotten. Returns the persons touched.
    pub fn forget_faces(&mut self, gone: impl Fn(&str) -> bool) -> BTreeSet<String> {
        let before = self.persons.clone();
        for facts in self.persons.values_mut() {
            facts.faces.retain(|f| !gone(f));
            facts.not_faces.retain(|f| !gone(f));
        }
        self.persons.retain(|_, f| !f.faces.is_empty());
        changed_keys(&before, &self.persons)
    }

    /// Forgets person `person_id` (deleted or dissolved): its id must not come back pinned.
    pub fn forget_person(&mut self, person_id: &str) -> bool {
        self.persons.remove(person_id).is_some()
    }

    /// Person `person_id`'s facts, anchored: its current faces become confirmed.
    fn anchor(&mut self, groups: &Groups, person_id: &str) -> &mut PersonFacts {
        let facts = self.persons.entry(person_id.to_string()).or_default();
        if let Some(p) = groups.persons.iter().find(|p| p.person_id == person_id) {
            facts.faces.extend(
                p.face_ids
                    .iter()
                    .filter(|f| !facts.not_faces.contains(*f))
                    .cloned(),
            );
        }
        facts
    }

    fn merge(
        &mut self,
        groups: &mut Groups,
        into: &str,
        from: &[String],
    ) -> Result<(), CorrectionError> {
        if from.iter().any(|f| f == into) {
            return Err(CorrectionError::Invalid(format!(
                "cannot merge {into} with itself"
            )));
        }
        holder_index(groups, into)?;
        let mut rejected: BTreeSet<String> = self
            .persons
            .get(into)
            .map(|f| f.not_faces.clone())
            .unwrap_or_default();
        let mut gained: Vec<String> = Vec::new();
        let mut confirmed: Vec<String> = Vec::new();
        let mut name = None;
        for b in from {
            if let Some(i) = groups.persons.iter().position(|p| &p.person_id == b) {
                gained.extend(groups.persons.remove(i).face_ids);
            }
            if let Some(facts) = self.persons.remove(b) {
                confirmed.extend(facts.faces);
                rejected.extend(facts.not_faces);
                name = name.or(facts.name);
            }
        }
        // A face the user rejected from either person stays out of the merged one.
        let i = holder_index(groups, into)?;
        let person = &mut groups.persons[i];
        let members: Vec<String> = person.face_ids.drain(..).chain(gained).collect();
        let (mut kept, out): (Vec<String>, Vec<String>) =
            members.into_iter().partition(|f| !rejected.contains(f));
        kept.sort_unstable();
        kept.dedup();
        person.face_ids = kept;
        add_unassigned(groups, out);
        tidy(groups);
        let facts = self.anchor(groups, into);
        facts
            .faces
            .extend(confirmed.into_iter().filter(|f| !rejected.contains(f)));
        facts.not_faces.extend(rejected);
        if facts.name.is_none() {
            facts.name = name;
        }
        Ok(())
    }

    fn move_face(
        &mut self,
        groups: &mut Groups,
        face_id: &str,
        to: &str,
    ) -> Result<(), CorrectionError> {
        holder_index(groups, to)?;
        let from = take_face(groups, face_id)?;
        let i = holder_index(groups, to)?;
        let person = &mut groups.persons[i];
        person.face_ids.push(face_id.to_string());
        person.face_ids.sort_unstable();
        tidy(groups);
        self.unconfirm(face_id);
        let facts = self.anchor(groups, to);
        facts.not_faces.remove(face_id);
        facts.faces.insert(face_id.to_string());
        if let Some(from) = from.filter(|f| f != to) {
            self.reject(groups, &from, face_id);
        }
        Ok(())
    }

    fn not_person(
        &mut self,
        groups: &mut Groups,
        face_id: &str,
        person_id: &str,
    ) -> Result<(), CorrectionError> {
        if !groups.persons.iter().any(|p| p.person_id == person_id)
            && !self.persons.contains_key(person_id)
        {
            return Err(CorrectionError::UnknownPerson(person_id.to_string()));
        }
        if !all_faces(groups).any(|f| f == face_id) {
            return Err(CorrectionError::UnknownFace(face_id.to_string()));
        }
        if let Some(p) = groups.persons.iter_mut().find(|p| p.person_id == person_id) {
            if let Some(k) = p.face_ids.iter().position(|f| f == face_id) {
                p.face_ids.remove(k);
                add_unassigned(groups, vec![face_id.to_string()]);
            }
        }
        tidy(groups);
        self.reject(groups, person_id, face_id);
        Ok(())
    }

    fn split(
        &mut self,
        groups: &mut Groups,
        face_id: &str,
        next: &mut u64,
    ) -> Result<(), CorrectionError> {
        let holder = groups
            .persons
            .iter()
            .find(|p| p.face_ids.iter().any(|f| f == face_id));
        if let Some(p) = holder.filter(|p| p.face_ids.len() == 1) {
            // Alone already (split before, or a person of one face): anchor it as it is.
            let person_id = p.person_id.clone();
            self.unconfirm(face_id);
            let facts = self.anchor(groups, &person_id);
            facts.not_faces.remove(face_id);
            facts.faces.insert(face_id.to_string());
            return Ok(());
        }
        let from = take_face(groups, face_id)?;
        let person_id = format!("person-{next}");
        *next += 1;
        groups
            .persons
            .push(Person::with_faces(person_id.clone(), [face_id]));
        tidy(groups);
        self.unconfirm(face_id);
        self.anchor(groups, &person_id);
        if let Some(from) = from {
            self.reject(groups, &from, face_id);
        }
        Ok(())
    }

    /// Records that `face_id` is not `person_id` (anchoring the person).
    fn reject(&mut self, groups: &Groups, person_id: &str, face_id: &str) {
        let facts = self.anchor(groups, person_id);
        facts.faces.remove(face_id);
        facts.not_faces.insert(face_id.to_string());
    }

    /// `face_id` is no longer confirmed as anyone.
    fn unconfirm(&mut self, face_id: &str) {
        for facts in self.persons.values_mut() {
            facts.faces.remove(face_id);
        }
    }
}

/// Index of person `person_id` in `groups`.
fn holder_index(groups: &Groups, person_id: &str) -> Result<usize, CorrectionError> {
    groups
        .persons
        .iter()
        .position(|p| p.person_id == person_id)
        .ok_or_else(|| CorrectionError::UnknownPerson(person_id.to_string()))
}

/// Takes `face_id` out of wherever it is; returns the person that held it.
fn take_face(groups: &mut Groups, face_id: &str) -> Result<Option<String>, CorrectionError> {
    for p in &mut groups.persons {
        if let Some(k) = p.face_ids.iter().position(|f| f == face_id) {
            p.face_ids.remove(k);
            return Ok(Some(p.person_id.clone()));
        }
    }
    match groups.unassigned.iter().position(|f| f == face_id) {
        Some(k) => {
            groups.unassigned.remove(k);
            Ok(None)
        }
        None => Err(CorrectionError::UnknownFace(face_id.to_string())),
    }
}

fn all_faces(groups: &Groups) -> impl Iterator<Item = &str> {
    groups
        .persons
        .iter()
        .flat_map(|p| p.face_ids.iter())
        .chain(groups.unassigned.iter())
        .map(String::as_str)
}

fn add_unassigned(groups: &mut Groups, faces: Vec<String>) {
    groups.unassigned.extend(faces);
    groups.unassigned.sort_unstable();
    groups.unassigned.dedup();
}

/// Drops persons left without faces; one that lost its representative shows its first face.
fn tidy(groups: &mut Groups) {
    groups.persons.retain(|p| !p.face_ids.is_empty());
    for p in &mut groups.persons {
        if !p.face_ids.contains(&p.representative) {
            p.representative = p.face_ids[0].clone();
        }
    }
}

fn changed_keys(
    before: &BTreeMap<String, PersonFacts>,
    after: &BTreeMap<String, PersonFacts>,
) -> BTreeSet<String> {
    before
        .keys()
        .chain(after.keys())
        .filter(|k| before.get(*k) != after.get(*k))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn groups() -> Groups {
        Groups {
            persons: vec![
                Person::with_faces("person-1", ["a1", "a2", "a3"]),
                Person::with_faces("person-2", ["b1", "b2"]),
                Person::with_faces("person-3", ["c1", "c2"]),
            ],
            unassigned: vec!["u1".into()],
        }
    }

    fn person<'a>(g: &'a Groups, id: &str) -> Option<&'a Person> {
        g.persons.iter().find(|p| p.person_id == id)
    }

    /// Applying `c` once more, to the result or to the start with the facts already updated,
    /// changes nothing.
    fn apply_idempotent(
        c: &Correction,
        start: &Groups,
        book: &mut Corrections,
        next: u64,
    ) -> (Groups, u64) {
        let mut once = start.clone();
        let applied = book.apply(c, &mut once, next).expect("applies");
        let facts = book.clone();
        let mut twice = once.clone();
        let again = book
            .apply(c, &mut twice, applied.next_person)
            .expect("again");
        assert_eq!(twice, once, "{c:?} twice");
        assert_eq!(*book, facts, "{c:?} twice: facts");
        assert!(
            again.touched.is_empty(),
            "{c:?} twice touched {:?}",
            again.touched
        );
        let mut replay = start.clone();
        let mut replay_book = facts.clone();
        let r = replay_book.apply(c, &mut replay, next).expect("replay");
        assert_eq!(replay, once, "{c:?} replayed after a crash");
        assert_eq!(replay_book, facts, "{c:?} replayed: facts");
        assert_eq!(r.next_person, applied.next_person);
        (once, applied.next_person)
    }

    #[test]
    fn each_correction_edits_only_what_it_names_and_is_idempotent() {
        let mut book = Corrections::default();
        let g = groups();
        let merge = Correction::Merge {
            into: "person-1".into(),
            from: vec!["person-2".into()],
        };
        let (g, next) = apply_idempotent(&merge, &g, &mut book, 4);
        assert_eq!(next, 4);
        assert_eq!(
            person(&g, "person-1").map(|p| p.face_ids.clone()),
            Some(vec![
                "a1".into(),
                "a2".into(),
                "a3".into(),
                "b1".into(),
                "b2".into()
            ])
        );
        assert!(person(&g, "person-2").is_none());
        assert_eq!(person(&g, "person-3"), groups().persons.get(2), "untouched");
        assert_eq!(book.persons["person-1"].faces.len(), 5);

        let not = Correction::NotPerson {
            face_id: "b2".into(),
            person_id: "person-1".into(),
        };
        let (g, _) = apply_idempotent(&not, &g, &mut book, next);
        assert!(g.unassigned.contains(&"b2".to_string()));
        assert!(book.persons["person-1"].not_faces.contains("b2"));

        let mv = Correction::Move {
            face_id: "c1".into(),
            to: "person-1".into(),
        };
        let (g, _) = apply_idempotent(&mv, &g, &mut book, next);
        assert!(person(&g, "person-1").is_some_and(|p| p.face_ids.contains(&"c1".into())));
        assert!(book.persons["person-3"].not_faces.contains("c1"));

        let split = Correction::Split {
            face_id: "a3".into(),
        };
        let (g, next) = apply_idempotent(&split, &g, &mut book, next);
        assert_eq!(next, 5);
        assert_eq!(
            person(&g, "person-4").map(|p| p.face_ids.clone()),
            Some(vec!["a3".into()])
        );
        assert!(book.persons["person-1"].not_faces.contains("a3"));

        let name = Correction::Name {
            person_id: "person-3".into(),
            name: " Ana ".into(),
        };
        let (mut g, _) = apply_idempotent(&name, &g, &mut book, next);
        book.label(&mut g);
        assert_eq!(
            person(&g, "person-3").and_then(|p| p.name.as_deref()),
            Some("Ana")
        );
    }

    #[test]
    fn unknown_persons_and_faces_are_refused_without_change() {
        let mut book = Corrections::default();
        let mut g = groups();
        for c in [
            Correction::Merge {
                into: "person-9".into(),
                from: vec!["person-1".into()],
            },
            Correction::Move {
                face_id: "zz".into(),
                to: "person-1".into(),
            },
            Correction::Name {
                person_id: "person-1".into(),
                name: "  ".into(),
            },
        ] {
            assert!(book.apply(&c, &mut g, 4).is_err(), "{c:?}");
            assert_eq!(g, groups());
            assert_eq!(book, Corrections::default());
        }
    }

    #[test]
    fn constraints_pin_anchored_persons_and_keep_rejected_faces_out() {
        let mut book = Corrections::default();
        let mut g = groups();
        book.apply(
            &Correction::NotPerson {
                face_id: "a3".into(),
                person_id: "person-1".into(),
            },
            &mut g,
            4,
        )
        .expect("applies");
        let c = book.constraints();
        assert_eq!(c.must_link.len(), 1);
        assert_eq!(c.must_link[0].person_id.as_deref(), Some("person-1"));
        assert_eq!(c.must_link[0].face_ids, ["a1", "a2"]);
        assert!(c.cannot_link.contains(&("a3".into(), "a1".into())));
        // Deleting the confirmed faces forgets the person.
        let touched = book.forget_faces(|f| f.starts_with('a'));
        assert_eq!(touched, BTreeSet::from(["person-1".to_string()]));
        assert!(book.persons.is_empty());
    }
}
