//! `facegroup export --out OUT --format jsonl|json`: the store's faces or grouping in the file
//! shapes `facegroup run` has always written (`faces.jsonl`, `groups.json`), for scripts.
//!
//! `facegroup export --out OUT --by-person DIR`: a folder per person, for file managers and
//! photo viewers: `DIR/<name>/` for a named person (the name made safe as a file name; a name
//! used twice gets the person id added), `DIR/<person id>/` otherwise, holding a symbolic link
//! (or with `--copy` a copy) to each photo the person appears in. A photo in a subfolder of the
//! library is named by its relative path with `/` turned into `_`. Unassigned faces are not
//! exported. DIR must be new or empty, or an earlier export (it carries a marker file), which
//! is then replaced whole.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::ValueEnum;

use crate::output;
use crate::store::Store;

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["format", "by_person"])))]
pub struct ExportArgs {
    /// Output folder of an earlier `facegroup run` (holding facegroup.db).
    #[arg(long, short, env = "FACEGROUP_OUT")]
    pub out: PathBuf,
    /// jsonl: one face per line, as faces.jsonl; json: the persons, as groups.json.
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// File to write [default: standard output].
    #[arg(long, conflicts_with = "by_person")]
    pub to: Option<PathBuf>,
    /// Write a folder per person of links to its photos into this folder.
    #[arg(long, value_name = "DIR")]
    pub by_person: Option<PathBuf>,
    /// With --by-person: copy the photos instead of linking them.
    #[arg(long, requires = "by_person")]
    pub copy: bool,
}

/// The file that marks a folder as written by `export --by-person` (and so safe to replace).
const MARKER: &str = ".facegroup-export";

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    Jsonl,
    Json,
}

pub fn run(args: &ExportArgs) -> Result<()> {
    let store = Store::open_existing(&args.out)?;
    let (format, by_person) = (args.format, args.by_person.as_ref());
    let format = match (format, by_person) {
        (_, Some(dir)) => return by_person_folders(&store, dir, args.copy),
        (Some(format), None) => format,
        (None, None) => bail!("give --format or --by-person"),
    };
    let body = |w: &mut dyn Write| -> Result<()> {
        let groups = store.groups()?;
        match format {
            Format::Jsonl => {
                let persons = output::person_of(groups.as_ref());
                output::write_faces(w, &store.images()?, &persons)
            }
            Format::Json => output::write_groups(w, &groups.unwrap_or_default()),
        }
    };
    match &args.to {
        Some(path) => output::write_file(path, body),
        None => {
            let stdout = std::io::stdout();
            let mut lock = std::io::BufWriter::new(stdout.lock());
            body(&mut lock)?;
            lock.flush().context("cannot write to standard output")
        }
    }
}

/// Writes `dir/<person>/<photo>` links (or copies) for every person of the stored grouping.
fn by_person_folders(store: &Store, dir: &Path, copy: bool) -> Result<()> {
    let photos_dir = store
        .last_run()?
        .map(|r| PathBuf::from(r.photos_dir))
        .context("no finished run in the store")?;
    prepare(dir)?;
    let groups = store.groups()?.unwrap_or_default();
    let names = store.person_names()?;
    let image_of: HashMap<String, String> = store
        .faces()?
        .into_iter()
        .map(|f| (f.face_id, f.image_id))
        .collect();
    let mut used = HashSet::new();
    let mut written = 0;
    for person in &groups.persons {
        let mut folder = names
            .get(&person.person_id)
            .map(|n| safe_file_name(n))
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| safe_file_name(&person.person_id));
        if !used.insert(folder.clone()) {
            folder = format!("{folder} ({})", safe_file_name(&person.person_id));
            used.insert(folder.clone());
        }
        let target = dir.join(&folder);
        std::fs::create_dir_all(&target)
            .with_context(|| format!("cannot create {}", target.display()))?;
        let photos: BTreeSet<&str> = person
            .face_ids
            .iter()
            .filter_map(|f| image_of.get(f).map(String::as_str))
            .collect();
        for photo in photos {
            let source = photos_dir.join(photo);
            let link = target.join(safe_file_name(&photo.replace('/', "_")));
            if copy {
                std::fs::copy(&source, &link).map(|_| ())
            } else {
                std::os::unix::fs::symlink(&source, &link)
            }
            .with_context(|| format!("cannot write {} -> {}", link.display(), source.display()))?;
            written += 1;
        }
    }
    println!(
        "{} person folder(s), {written} photo {} in {}",
        groups.persons.len(),
        if copy { "copies" } else { "links" },
        dir.display()
    );
    Ok(())
}

/// Makes `dir` an empty export folder: created, or emptied when an earlier export wrote it.
fn prepare(dir: &Path) -> Result<()> {
    let marker = dir.join(MARKER);
    if marker.is_file() {
        std::fs::remove_dir_all(dir)
            .with_context(|| format!("cannot replace {}", dir.display()))?;
    } else if dir.exists() {
        let mut entries =
            std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
        if entries.next().is_some() {
            bail!(
                "{} is not empty and not an earlier export: give a new folder",
                dir.display()
            );
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::write(
        &marker,
        b"written by facegroup export --by-person; replaced by the next\n",
    )
    .with_context(|| format!("cannot write {}", marker.display()))
}

/// `name` usable as one file name: no path separators, control characters or leading dot.
fn safe_file_name(name: &str) -> String {
    let cleaned: String = name
        .trim()
        .chars()
        .map(|c| {
            if c == '/' || c == '\\' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    cleaned.trim_start_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_made_safe() {
        assert_eq!(safe_file_name(" Ana / Bo\n"), "Ana _ Bo");
        assert_eq!(safe_file_name("../x"), "_x");
        assert_eq!(safe_file_name(".."), "");
    }
}
