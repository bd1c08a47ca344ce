//! The report: one row per method and subset, as a Markdown table or (`--json`) one JSON
//! object per line with pairwise P/R/F, BCubed P/R/F, persons and seconds.

use std::time::Instant;

use facegroup_core::group::metrics::{self, Prf, Scores};
use serde_json::json;

/// One method's result on one subset.
pub struct Row {
    pub method: String,
    pub scores: Scores,
    /// Distinct persons among the scored photos.
    pub persons: usize,
    pub seconds: f64,
}

impl Row {
    /// Scores `predicted` against `truth`; the time is measured from `started`.
    pub fn new(method: String, truth: &[u32], predicted: &[Option<u32>], started: Instant) -> Self {
        let seconds = started.elapsed().as_secs_f64();
        let mut ids: Vec<u32> = predicted.iter().flatten().copied().collect();
        ids.sort_unstable();
        ids.dedup();
        Self {
            method,
            scores: metrics::score(truth, predicted),
            persons: ids.len(),
            seconds,
        }
    }
}

/// Prints rows as they come, in the chosen format.
pub struct Report {
    json: bool,
    dataset: String,
    header_done: bool,
}

impl Report {
    pub fn new(json: bool, dataset: String) -> Self {
        Self {
            json,
            dataset,
            header_done: false,
        }
    }

    /// A row for `subset` (`all`, `fold N`, `fold N tuned on fold M`).
    pub fn row(&mut self, subset: &str, row: &Row) {
        if self.json {
            let prf = |p: &Prf| json!({"precision": p.precision, "recall": p.recall, "f": p.f});
            let line = json!({
                "dataset": self.dataset,
                "subset": subset,
                "method": row.method,
                "pairwise": prf(&row.scores.pairwise),
                "bcubed": prf(&row.scores.bcubed),
                "persons": row.persons,
                "seconds": row.seconds,
            });
            println!("{line}");
            return;
        }
        if !self.header_done {
            self.header_done = true;
            println!(
                "| {:<24} | {:<70} | {:>6} {:>6} {:>6} | {:>6} {:>6} {:>6} | {:>7} | {:>6} |",
                "subset",
                "method",
                "pw P",
                "pw R",
                "pw F",
                "B3 P",
                "B3 R",
                "B3 F",
                "persons",
                "secs"
            );
            println!(
                "|{:-<26}|{:-<72}|{:-<22}|{:-<22}|{:-<9}|{:-<8}|",
                "", "", "", "", "", ""
            );
        }
        let (p, b) = (&row.scores.pairwise, &row.scores.bcubed);
        println!(
            "| {:<24} | {:<70} | {:.4} {:.4} {:.4} | {:.4} {:.4} {:.4} | {:>7} | {:>6.2} |",
            subset,
            row.method,
            p.precision,
            p.recall,
            p.f,
            b.precision,
            b.recall,
            b.f,
            row.persons,
            row.seconds
        );
    }
}
