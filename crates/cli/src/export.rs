//! `facegroup export --out OUT --format jsonl|json`: the store's faces or grouping in the file
//! shapes `facegroup run` has always written (`faces.jsonl`, `groups.json`), for scripts.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::ValueEnum;

use crate::output;
use crate::store::Store;

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// Output folder of an earlier `facegroup run` (holding facegroup.db).
    #[arg(long, short, env = "FACEGROUP_OUT")]
    pub out: PathBuf,
    /// jsonl: one face per line, as faces.jsonl; json: the persons, as groups.json.
    #[arg(long, value_enum)]
    pub format: Format,
    /// File to write [default: standard output].
    #[arg(long)]
    pub to: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    Jsonl,
    Json,
}

pub fn run(args: &ExportArgs) -> Result<()> {
    let store = Store::open_existing(&args.out)?;
    let body = |w: &mut dyn Write| -> Result<()> {
        let groups = store.groups()?;
        match args.format {
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
