//! The labelled dataset: `labels.csv` (`path,identity`, paths relative to the dataset folder)
//! and the identity-level folds used to tune on some people and report on others.

use std::fs;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// One labelled photo.
pub struct Item {
    pub path: String,
    pub identity: String,
}

/// The photos of `labels.csv`, in file order.
pub fn read_labels(dataset: &Path) -> Result<Vec<Item>> {
    let csv = dataset.join("labels.csv");
    let text = fs::read_to_string(&csv).with_context(|| format!("reading {}", csv.display()))?;
    let mut items = Vec::new();
    for (n, line) in text.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let Some((path, identity)) = line.rsplit_once(',') else {
            bail!("{}:{}: expected path,identity", csv.display(), n + 1);
        };
        items.push(Item {
            path: path.trim().to_owned(),
            identity: identity.trim().to_owned(),
        });
    }
    if items.is_empty() {
        bail!("{}: no labelled photos", csv.display());
    }
    Ok(items)
}

/// A dense identity number per photo (identities in name order).
pub fn identity_ids(items: &[Item]) -> Vec<u32> {
    let mut names: Vec<&str> = items.iter().map(|i| i.identity.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    items
        .iter()
        .map(|i| names.binary_search(&i.identity.as_str()).unwrap_or(0) as u32)
        .collect()
}

/// A part of the dataset that is grouped and scored on its own.
pub struct Subset {
    /// `all` or `fold N`.
    pub name: String,
    /// Indices into the items, in file order.
    pub items: Vec<usize>,
}

/// The whole dataset (`folds` <= 1) or its identity-level folds: an identity's photos all go
/// to fold `fnv1a(identity) % folds`, a rule that does not depend on the data, so the split is
/// the same on every machine and for every method.
pub fn subsets(items: &[Item], folds: usize) -> Vec<Subset> {
    if folds <= 1 {
        return vec![Subset {
            name: "all".to_owned(),
            items: (0..items.len()).collect(),
        }];
    }
    (0..folds)
        .map(|f| Subset {
            name: format!("fold {f}"),
            items: (0..items.len())
                .filter(|&i| fnv1a(items[i].identity.as_bytes()) % folds as u64 == f as u64)
                .collect(),
        })
        .collect()
}

/// Stable 64-bit FNV-1a (std's hasher is randomly seeded per process).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
