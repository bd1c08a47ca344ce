//! The person summaries a committed grouping run leaves for the next incremental job
//! (`facegroup_core::group::incremental`), as one S3 object next to the run JSON:
//! `{groups prefix}{gallery}/summaries/run-{N}.bin`.
//!
//! Why binary: a summary holds each person's 512-float embedding sum; 50,000 persons are 100 MB
//! of floats, which JSON would print as ~250 MB of decimal text and parse slowly. The sums must
//! also come back bit-identical (the linkage is compared against thresholds), which raw
//! little-endian `f32` guarantees. Layout:
//!
//! ```text
//! b"FGSUM1\n"  u64 LE header length  header JSON ([`SummaryHeader`])  persons x dim f32 LE
//! ```
//!
//! The header names what the summaries describe (gallery, run number, model version, minimum
//! quality, dimension), so a job detects a summary that does not belong to the committed run
//! or to its own settings and falls back to reading every face.

use facegroup_core::group::incremental::PersonSummary;
use serde::{Deserialize, Serialize};

use crate::error::StoreError;

const MAGIC: &[u8] = b"FGSUM1\n";

/// What a summary object describes; must match the committed run and the job to be used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SummaryHeader {
    pub gallery_id: String,
    pub run_number: u64,
    pub model_version: String,
    /// `GroupConfig::min_quality` of the run: it decides which faces are seeds, so which faces
    /// the sums hold.
    pub min_quality: f32,
    pub dim: usize,
    /// The persons without their sums, in summary order.
    pub persons: Vec<PersonMeta>,
}

/// A [`PersonSummary`] without its sum.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PersonMeta {
    pub person_id: String,
    pub seeds: u32,
    pub faces: u32,
    pub image_ids: Vec<String>,
    pub representative: String,
}

/// `{groups_prefix}{gallery}/summaries/run-{N}.bin` (not under `run-`, which holds run JSONs
/// only).
pub fn summary_key(groups_prefix: &str, gallery_id: &str, run_number: u64) -> String {
    format!("{groups_prefix}{gallery_id}/summaries/run-{run_number:010}.bin")
}

/// The object's bytes. The header's `persons` and `dim` are taken from `summaries`.
pub fn encode(header: &SummaryHeader, summaries: &[PersonSummary]) -> Result<Vec<u8>, StoreError> {
    let dim = summaries.first().map_or(header.dim, |s| s.sum.len());
    if let Some(s) = summaries.iter().find(|s| s.sum.len() != dim) {
        return Err(StoreError::Malformed(format!(
            "summary of {}: {} floats, expected {dim}",
            s.person_id,
            s.sum.len()
        )));
    }
    let header = SummaryHeader {
        dim,
        persons: summaries
            .iter()
            .map(|s| PersonMeta {
                person_id: s.person_id.clone(),
                seeds: s.seeds,
                faces: s.faces,
                image_ids: s.image_ids.clone(),
                representative: s.representative.clone(),
            })
            .collect(),
        ..header.clone()
    };
    let json = serde_json::to_vec(&header)
        .map_err(|e| StoreError::Malformed(format!("serialising summaries: {e}")))?;
    let mut out = Vec::with_capacity(MAGIC.len() + 8 + json.len() + summaries.len() * dim * 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    for s in summaries {
        for x in &s.sum {
            out.extend_from_slice(&x.to_le_bytes());
        }
    }
    Ok(out)
}

/// [`encode`]'s inverse; any truncation or inconsistency is `Malformed`.
pub fn decode(bytes: &[u8]) -> Result<(SummaryHeader, Vec<PersonSummary>), StoreError> {
    let bad = |what: &str| StoreError::Malformed(format!("person summaries: {what}"));
    let rest = bytes.strip_prefix(MAGIC).ok_or_else(|| bad("no magic"))?;
    let (len, rest) = rest.split_at_checked(8).ok_or_else(|| bad("truncated"))?;
    let len = u64::from_le_bytes(len.try_into().map_err(|_| bad("length"))?);
    let len = usize::try_from(len).map_err(|_| bad("header length"))?;
    let (json, floats) = rest.split_at_checked(len).ok_or_else(|| bad("truncated"))?;
    let header: SummaryHeader =
        serde_json::from_slice(json).map_err(|e| bad(&format!("header: {e}")))?;
    let want = header
        .persons
        .len()
        .checked_mul(header.dim)
        .and_then(|n| n.checked_mul(4))
        .ok_or_else(|| bad("size"))?;
    if floats.len() != want {
        return Err(bad(&format!(
            "{} bytes of sums, expected {want}",
            floats.len()
        )));
    }
    let dim = header.dim;
    let summaries = header
        .persons
        .iter()
        .zip(floats.chunks_exact((dim * 4).max(1)))
        .map(|(p, raw)| PersonSummary {
            person_id: p.person_id.clone(),
            sum: raw
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            seeds: p.seeds,
            faces: p.faces,
            image_ids: p.image_ids.clone(),
            representative: p.representative.clone(),
        })
        .collect();
    Ok((header, summaries))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> SummaryHeader {
        SummaryHeader {
            gallery_id: "g".into(),
            run_number: 7,
            model_version: "m".into(),
            min_quality: 0.3,
            dim: 0,
            persons: Vec::new(),
        }
    }

    fn person(id: &str, sum: Vec<f32>) -> PersonSummary {
        PersonSummary {
            person_id: id.into(),
            sum,
            seeds: 2,
            faces: 3,
            image_ids: vec!["a".into(), "b".into()],
            representative: format!("{id}-face"),
        }
    }

    #[test]
    fn round_trips_bit_identically_and_rejects_damage() {
        let persons = vec![
            person("person-1", vec![0.1, -2.5e-8, f32::MIN_POSITIVE]),
            person("person-2", vec![1.0, 2.0, 3.0]),
        ];
        let bytes = encode(&header(), &persons).expect("encode");
        let (h, back) = decode(&bytes).expect("decode");
        assert_eq!(back, persons);
        assert_eq!((h.dim, h.run_number, h.persons.len()), (3, 7, 2));
        assert!(decode(&bytes[..bytes.len() - 1]).is_err(), "truncated sums");
        assert!(decode(&bytes[1..]).is_err(), "no magic");
        assert!(decode(&bytes[..20]).is_err(), "truncated header");
        let ragged = vec![person("a", vec![1.0]), person("b", vec![1.0, 2.0])];
        assert!(encode(&header(), &ragged).is_err());
    }
}
