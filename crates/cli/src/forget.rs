//! `facegroup forget PHOTO|PERSON --out OUT`: deletes a photo's or a person's face data from
//! the library (faces are biometric data: a user must be able to have them deleted), and keeps
//! later runs from bringing it back.
//!
//! - A photo (its path relative to the photo folder, or the path of the file itself, matched by
//!   content): its image row, faces, embeddings, crops and the corrections naming its faces
//!   go. A tombstone stays (path, size, mtime, content hash; nothing of the faces), and
//!   `facegroup run` skips the file while its content is the forgotten one. A changed file
//!   (other content) is a new photo and is analysed; `--restore` drops the tombstone so the
//!   next run analyses it again.
//! - A person (its id): its faces, embeddings and crops, the corrections naming it or its
//!   faces, and its name go. Each face leaves a tombstone of its photo's path and content hash
//!   and its box: if that photo is analysed again with the same content (new models, or
//!   `--restore` of another face), a face whose box overlaps a forgotten one is left out. The
//!   person's other photos stay. A changed photo is analysed afresh.
//!
//! Forgetting is idempotent: forgetting what is already forgotten says so and changes nothing.
//! The exports (if a run wrote them) and the report are written again from the store at once.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::store::{content_hash, Forgotten, Store};
use crate::{grouping, output};

#[derive(Debug, clap::Args)]
pub struct ForgetArgs {
    /// A person id (as in groups.json), or a photo: its path relative to the photo folder (as
    /// in images.jsonl) or the path of the file itself.
    pub target: String,
    /// Output folder of an earlier `facegroup run` (holding facegroup.db).
    #[arg(long, short, env = "FACEGROUP_OUT")]
    pub out: PathBuf,
    /// Undo forgetting a photo: its tombstones go and the next run analyses it again.
    #[arg(long)]
    pub restore: bool,
}

pub fn run(args: &ForgetArgs) -> Result<()> {
    let mut store = Store::open_existing(&args.out)?;
    let target = args.target.as_str();
    if args.restore {
        let names = photo_names(&store, target)?;
        let mut restored = 0;
        for name in &names {
            restored += usize::from(store.restore_image(name)?);
        }
        if restored == 0 {
            println!("{target}: nothing forgotten to restore");
        } else {
            println!("{target}: restored; the next `facegroup run` analyses it again");
        }
        return Ok(());
    }

    let groups = store.groups()?;
    let forgotten = if groups
        .as_ref()
        .is_some_and(|g| g.persons.iter().any(|p| p.person_id == target))
    {
        let mut without = groups.unwrap_or_default();
        without.persons.retain(|p| p.person_id != target);
        let gone = store.forget_person(target, &without)?;
        println!("forgot person {target}: {} face(s)", gone.faces.len());
        gone
    } else if store.is_forgotten_person(target)? {
        println!("{target}: already forgotten, nothing changed");
        return Ok(());
    } else {
        let names = photo_names(&store, target)?;
        let stored = store.file_states()?;
        let live: Vec<&String> = names.iter().filter(|n| stored.contains_key(*n)).collect();
        if live.is_empty() {
            println!("{target}: already forgotten, nothing changed");
            return Ok(());
        }
        let mut all = Forgotten::default();
        for name in live {
            let gone_ids: HashSet<String> = store
                .faces()?
                .into_iter()
                .filter(|f| &f.image_id == name)
                .map(|f| f.face_id)
                .collect();
            let without = store.groups()?.map(|g| {
                let keep: HashSet<&str> = g
                    .persons
                    .iter()
                    .flat_map(|p| &p.face_ids)
                    .chain(&g.unassigned)
                    .map(String::as_str)
                    .filter(|f| !gone_ids.contains(*f))
                    .collect();
                grouping::prune(g.clone(), &keep)
            });
            if let Some(gone) = store.forget_image(name, without.as_ref())? {
                println!("forgot photo {name}: {} face(s)", gone.faces.len());
                all.faces.extend(gone.faces);
            }
        }
        all
    };
    for (image, index) in &forgotten.faces {
        output::remove_crop(&args.out, image, *index)?;
    }
    // The exports are written again only when a run wrote them (not under --no-export).
    let exports = args.out.join(output::FACES_FILE).exists();
    let details = store.last_run()?.unwrap_or_default();
    output::write_outputs(&args.out, &store, &details, exports, true)?;
    Ok(())
}

/// The stored or forgotten photo names `target` stands for: the name itself when the store
/// knows it, otherwise, when `target` is a file, the photos with its content.
fn photo_names(store: &Store, target: &str) -> Result<Vec<String>> {
    let stored = store.file_states()?;
    let tombstones = store.forgotten_images()?;
    if stored.contains_key(target) || tombstones.contains_key(target) {
        return Ok(vec![target.to_string()]);
    }
    let path = Path::new(target);
    if !path.is_file() {
        bail!(
            "{target} is neither a person (ids are in groups.json) nor a stored photo (names \
             are in images.jsonl) nor a file"
        );
    }
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {target}"))?;
    let hash = content_hash(&bytes);
    let mut names: Vec<String> = stored
        .into_iter()
        .filter(|(_, f)| f.hash == hash)
        .map(|(n, _)| n)
        .chain(
            tombstones
                .into_iter()
                .filter(|(_, t)| t.hash == hash)
                .map(|(n, _)| n),
        )
        .collect();
    names.sort();
    if names.is_empty() {
        bail!("{target}: no photo with this content is in the library");
    }
    Ok(names)
}
