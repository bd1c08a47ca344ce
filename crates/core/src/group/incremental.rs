//! Incremental assignment against persisted per-person summaries.
//!
//! Why: [`super::assign_new_faces`] needs every face of the gallery (the persons' embeddings
//! define them, and it builds a kNN graph over all faces), so filing 1,000 new faces into a
//! 1M-face gallery would read 2 GiB of embeddings and search a million-face graph. Yet what it
//! decides for a new face depends only on, per person: the sum of its seed faces' unit
//! embeddings and their count (the average linkage `dot(sum, x) / count`), the photos it already
//! has (cannot-link), and its id. A [`PersonSummary`] holds exactly that, about 2 KiB a person,
//! so an incremental job reads the new faces plus the summaries and nothing else.
//!
//! [`summarise`] builds the summaries of a committed run from its faces (once, at a full run);
//! [`assign_with_summaries`] files new faces, and returns the assignments and the summaries
//! updated for the next run; [`Assignment::apply`] merges the assignments into the committed
//! [`Groups`], giving what [`super::assign_new_faces`] gives.
//!
//! Same decisions as [`super::assign_new_faces`]: the same normalisation, the same sums (same
//! faces, same order, so bit-identical linkages), the same thresholds, tie-breaks and greedy
//! order of claims. One difference, in the summaries' favour: today's path only considers the
//! persons that own one of the face's `k` graph neighbours, while the summaries are scanned
//! exhaustively (every person's linkage is one dot product: `new x persons x d` multiply-adds,
//! 1,000 x 50,000 x 512 = 2.6e10, screened with dense matrix products and decided on the exact
//! dot products of the few pairs that pass, see [`screen`]), so a person whose faces all sit
//! beyond the face's `k` nearest can still be chosen. On a small gallery, where the graph reaches
//! every person, the results are identical (tested below).
//!
//! The grouping worker stores the summaries with each committed run and takes this path for
//! incremental jobs (its `handler` module doc says when it falls back to reading every face).
//!
//! Not kept: exemplar faces. The linkage needs only the sum, and the representative of a person
//! does not change while faces are only attached; the next full run recomputes it.

use std::collections::{HashMap, HashSet};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::{dot, FaceInput, FaceSet, GroupConfig, GroupError, Groups, Person};

/// What incremental assignment needs to know of one person.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PersonSummary {
    pub person_id: String,
    /// Sum of the unit embeddings of the person's seed faces (good-quality faces; all its faces
    /// when it has none), summed in face id order.
    pub sum: Vec<f32>,
    /// How many faces `sum` holds.
    pub seeds: u32,
    /// Every face of the person, seeds or not.
    pub faces: u32,
    /// Sorted, distinct photo ids of the person's faces: a new face from one of them cannot join.
    pub image_ids: Vec<String>,
    /// The person's representative face.
    pub representative: String,
}

/// The outcome of [`assign_with_summaries`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    /// `(face_id, person_id)` of every face that joined a person, in face id order.
    pub assigned: Vec<(String, String)>,
    /// Sorted ids of the new faces that joined no person.
    pub unassigned: Vec<String>,
    /// The summaries with the assigned faces added (good faces into `sum` too), for the next run.
    pub summaries: Vec<PersonSummary>,
}

/// Summaries of the persons of `groups`, built from `faces` (which must hold their faces; faces
/// of `groups` missing from `faces` are left out, as [`super::assign_new_faces`] drops them).
/// Persons keep the order of `groups`, which breaks ties between equal linkages.
pub fn summarise(
    groups: &Groups,
    faces: &[FaceInput],
    cfg: &GroupConfig,
) -> Result<Vec<PersonSummary>, GroupError> {
    let set = FaceSet::new(faces, cfg, None)?;
    let index = set.index();
    let image_of: HashMap<&str, &str> = faces
        .iter()
        .map(|f| (f.face_id.as_str(), f.image_id.as_str()))
        .collect();
    let mut out = Vec::with_capacity(groups.persons.len());
    for p in &groups.persons {
        let Some((all, c)) = set.seed_cluster(&index, &p.face_ids) else {
            continue;
        };
        let mut image_ids: Vec<String> = all
            .iter()
            .filter_map(|&i| image_of.get(set.ids[i].as_str()))
            .map(|s| (*s).to_owned())
            .collect();
        image_ids.sort_unstable();
        image_ids.dedup();
        out.push(PersonSummary {
            person_id: p.person_id.clone(),
            seeds: c.members.len() as u32,
            faces: all.len() as u32,
            image_ids,
            representative: set.ids[super::representative(&set, &c)].clone(),
            sum: c.sum,
        });
    }
    Ok(out)
}

/// Files `new_faces` (faces no person holds: new ones, and earlier unassigned ones to try
/// again) under the persons of `summaries`, as [`super::assign_new_faces`] would: a face joins
/// the person it matches best on average (`dot(sum, x) / seeds`), if that reaches the merge
/// threshold (good faces) or the attach threshold (low-quality faces) at the person's size and
/// the person has no face of the same photo; the best matches claim photos first.
pub fn assign_with_summaries(
    new_faces: &[FaceInput],
    summaries: Vec<PersonSummary>,
    cfg: &GroupConfig,
) -> Result<Assignment, GroupError> {
    let set = FaceSet::new(new_faces, cfg, None)?;
    if let Some(p) = summaries
        .iter()
        .find(|p| set.len() > 0 && p.sum.len() != set.dim)
    {
        return Err(GroupError::DimensionMismatch {
            face_id: format!("summary of {}", p.person_id),
            got: p.sum.len(),
            expected: set.dim,
        });
    }
    let image_of: HashMap<&str, &str> = new_faces
        .iter()
        .map(|f| (f.face_id.as_str(), f.image_id.as_str()))
        .collect();
    let screened = screen(&set, &summaries, cfg);
    let mut offers: Vec<(f32, usize, Vec<usize>)> = screened
        .par_iter()
        .enumerate()
        .filter_map(|(i, persons)| {
            // The exact linkage of the screened pairs, and the same rule as
            // `assign_new_faces`: the size-aware threshold and, for good faces, the cohesion
            // test against the person's own cohesion.
            let (threshold, cohesion) = rule(&set, cfg, i);
            let mut scored: Vec<(f32, usize)> = persons
                .iter()
                .filter_map(|&p| {
                    let s = &summaries[p];
                    let seeds = s.seeds.max(1);
                    let linkage = dot(&s.sum, set.row(i)) / seeds as f32;
                    let norm2 = dot(&s.sum, &s.sum);
                    (linkage >= threshold.at(1, seeds)
                        && cohesion.allows(linkage, cohesion.of(1.0, 1), cohesion.of(norm2, seeds)))
                    .then_some((linkage, p))
                })
                .collect();
            scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            let best = scored.first()?.0;
            Some((best, i, scored.into_iter().map(|(_, p)| p).collect()))
        })
        .collect();
    offers.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));

    // Photo sets only of the persons some face wants (building all 50,000 took longer than
    // the assignment).
    let mut photos: HashMap<usize, HashSet<&str>> = HashMap::new();
    let mut person_of: Vec<Option<usize>> = vec![None; set.len()];
    for (_, i, candidates) in offers {
        let image = image_of
            .get(set.ids[i].as_str())
            .copied()
            .unwrap_or_default();
        let chosen = candidates.iter().copied().find(|&p| {
            !photos
                .entry(p)
                .or_insert_with(|| summaries[p].image_ids.iter().map(String::as_str).collect())
                .contains(image)
        });
        if let Some(p) = chosen {
            photos.entry(p).or_default().insert(image);
            person_of[i] = Some(p);
        }
    }
    // Taken, not cloned: 50,000 summaries are 100 MB of sums and a million photo ids.
    let mut updated = summaries;
    let mut assigned = Vec::new();
    let mut unassigned = Vec::new();
    for (i, p) in person_of.into_iter().enumerate() {
        let Some(p) = p else {
            unassigned.push(set.ids[i].clone());
            continue;
        };
        let s = &mut updated[p];
        // Faces assigned here count as members on the next run, as they do for
        // `assign_new_faces` once they are in the committed groups.
        if set.seeds[i] {
            for (x, y) in s.sum.iter_mut().zip(set.row(i)) {
                *x += y;
            }
            s.seeds += 1;
        }
        s.faces += 1;
        let image = image_of
            .get(set.ids[i].as_str())
            .copied()
            .unwrap_or_default();
        if let Err(at) = s.image_ids.binary_search_by(|x| x.as_str().cmp(image)) {
            s.image_ids.insert(at, image.to_owned());
        }
        assigned.push((set.ids[i].clone(), s.person_id.clone()));
    }
    Ok(Assignment {
        assigned,
        unassigned,
        summaries: updated,
    })
}

impl Assignment {
    /// `previous` (the committed groups the summaries were built from) with the assignments
    /// merged in: persons ordered largest first, then by first face id; `unassigned` the faces
    /// of `previous.unassigned` and the new ones that joined no person. Persons of `previous`
    /// without a summary (none of their faces were given to [`summarise`]) are left out.
    pub fn apply(&self, previous: &Groups) -> Groups {
        let mut joined: HashMap<&str, Vec<&str>> = HashMap::new();
        for (face, person) in &self.assigned {
            joined
                .entry(person.as_str())
                .or_default()
                .push(face.as_str());
        }
        let known: HashSet<&str> = self
            .summaries
            .iter()
            .map(|s| s.person_id.as_str())
            .collect();
        let representative: HashMap<&str, &str> = self
            .summaries
            .iter()
            .map(|s| (s.person_id.as_str(), s.representative.as_str()))
            .collect();
        let assigned: HashSet<&str> = self.assigned.iter().map(|(f, _)| f.as_str()).collect();
        let mut persons: Vec<Person> = previous
            .persons
            .iter()
            .filter(|p| known.contains(p.person_id.as_str()))
            .map(|p| {
                let mut face_ids = p.face_ids.clone();
                if let Some(new) = joined.get(p.person_id.as_str()) {
                    face_ids.extend(new.iter().map(|f| (*f).to_owned()));
                    face_ids.sort_unstable();
                }
                Person {
                    person_id: p.person_id.clone(),
                    face_ids,
                    representative: representative
                        .get(p.person_id.as_str())
                        .map_or_else(|| p.representative.clone(), |r| (*r).to_owned()),
                    name: p.name.clone(),
                }
            })
            .collect();
        persons.sort_by(|a, b| {
            b.face_ids
                .len()
                .cmp(&a.face_ids.len())
                .then_with(|| a.face_ids.first().cmp(&b.face_ids.first()))
        });
        let mut unassigned: Vec<String> = previous
            .unassigned
            .iter()
            .filter(|f| !assigned.contains(f.as_str()))
            .cloned()
            .chain(self.unassigned.iter().cloned())
            .collect();
        unassigned.sort_unstable();
        unassigned.dedup();
        Groups {
            persons,
            unassigned,
        }
    }
}

/// What face `i` must reach: the merge threshold and cohesion test for good faces, the attach
/// threshold (no cohesion test) for low-quality ones, as in `assign_new_faces`.
/// For every face of `set`, the persons whose linkage may pass the face's threshold: all faces
/// against all summaries as dense matrix products ([`super::dense`], blocks of persons in
/// parallel), keeping the pairs whose linkage from the product clears the threshold less
/// [`SCREEN_MARGIN`]. The products round differently from [`dot`] (another summation order,
/// fused multiply-adds), by at most `d * 2^-24 * |sum|` on `dot(sum, x)`, i.e. 3e-5 on a linkage
/// (`|sum| <= seeds`); the decisions are then taken on [`dot`]'s linkage of the screened pairs
/// only, so they are bit-identical to scoring every pair with it, at the products' speed
/// (1,000 faces x 50,000 persons: 2.6e10 multiply-adds, ~0.4 s instead of ~3 s).
fn screen(set: &FaceSet, summaries: &[PersonSummary], cfg: &GroupConfig) -> Vec<Vec<usize>> {
    const PERSONS: usize = 1024;
    const FACES: usize = 256;
    let (n, dim) = (set.len(), set.dim);
    if n == 0 {
        return Vec::new();
    }
    let lowest: Vec<super::MergeThreshold> = (0..n).map(|i| rule(set, cfg, i).0).collect();
    let found: Vec<Vec<(u32, u32)>> = summaries
        .par_chunks(PERSONS)
        .enumerate()
        .map(|(block, persons)| {
            let mut base = Vec::with_capacity(persons.len() * dim);
            for p in persons {
                base.extend_from_slice(&p.sum);
            }
            let mut out = vec![0f32; FACES * persons.len()];
            let mut pairs = Vec::new();
            for f0 in (0..n).step_by(FACES) {
                let f1 = (f0 + FACES).min(n);
                super::dense::scores(&set.data[f0 * dim..f1 * dim], &base, dim, &mut out);
                for (r, row) in out.chunks(persons.len()).take(f1 - f0).enumerate() {
                    let i = f0 + r;
                    for ((j, &s), p) in row.iter().enumerate().zip(persons) {
                        let seeds = p.seeds.max(1);
                        if s / seeds as f32 >= lowest[i].at(1, seeds) - SCREEN_MARGIN {
                            pairs.push((i as u32, (block * PERSONS + j) as u32));
                        }
                    }
                }
            }
            pairs
        })
        .collect();
    let mut per_face = vec![Vec::new(); n];
    for (i, p) in found.into_iter().flatten() {
        per_face[i as usize].push(p as usize);
    }
    per_face
}

/// How far below its threshold a product's linkage may be and still be scored exactly (30x
/// the products' worst rounding difference, see [`screen`]).
const SCREEN_MARGIN: f32 = 1e-3;

fn rule(
    set: &FaceSet,
    cfg: &GroupConfig,
    i: usize,
) -> (super::MergeThreshold, super::hac::Cohesion) {
    if set.seeds[i] {
        (cfg.merge(), cfg.cohesion())
    } else {
        (cfg.attach(), super::hac::Cohesion::OFF)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group::{assign_new_faces, group_faces};

    const DIM: usize = 64;

    struct Rng(u64);

    impl Rng {
        fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn gaussian(&mut self) -> f32 {
            let u = ((self.next_u64() >> 40) as f32 + 0.5) / (1u64 << 24) as f32;
            let v = ((self.next_u64() >> 40) as f32 + 0.5) / (1u64 << 24) as f32;
            (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
        }

        fn unit(&mut self) -> Vec<f32> {
            let v: Vec<f32> = (0..DIM).map(|_| self.gaussian()).collect();
            let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.into_iter().map(|x| x / n).collect()
        }

        fn around(&mut self, centre: &[f32], noise: f32) -> Vec<f32> {
            let r = self.unit();
            centre.iter().zip(r).map(|(c, x)| c + noise * x).collect()
        }
    }

    fn face(id: &str, image: &str, embedding: Vec<f32>, quality_ok: bool) -> FaceInput {
        FaceInput {
            face_id: id.to_owned(),
            image_id: image.to_owned(),
            embedding,
            quality_ok,
            quality: 0.9,
        }
    }

    /// A gallery of 6 people x 5 faces and 4 strangers, then new faces: 2 more of each person
    /// (one of person 0's in a photo it already has, one of person 1's low quality), two faces
    /// of person 2 in one new photo, a face between persons 3 and 4, and 3 new strangers.
    fn scene() -> (Vec<FaceInput>, Vec<FaceInput>) {
        let mut rng = Rng(7);
        let centres: Vec<Vec<f32>> = (0..6).map(|_| rng.unit()).collect();
        let mut old = Vec::new();
        for (p, c) in centres.iter().enumerate() {
            for n in 0..5 {
                let id = format!("a-p{p}-{n}");
                old.push(face(&id, &format!("img-{id}"), rng.around(c, 0.8), true));
            }
        }
        for s in 0..4 {
            let id = format!("a-s{s}");
            old.push(face(&id, &format!("img-{id}"), rng.unit(), true));
        }
        let mut new = Vec::new();
        for (p, c) in centres.iter().enumerate() {
            for n in 0..2 {
                let id = format!("b-p{p}-{n}");
                let image = match (p, n) {
                    (0, 0) => "img-a-p0-3".to_owned(),
                    (2, _) => "img-b-shared".to_owned(),
                    _ => format!("img-{id}"),
                };
                new.push(face(&id, &image, rng.around(c, 0.8), !(p == 1 && n == 1)));
            }
        }
        let between: Vec<f32> = centres[3]
            .iter()
            .zip(&centres[4])
            .map(|(a, b)| a + b)
            .collect();
        new.push(face("b-between", "img-b-between", between, true));
        for s in 0..3 {
            let id = format!("b-s{s}");
            new.push(face(&id, &format!("img-{id}"), rng.unit(), true));
        }
        (old, new)
    }

    #[test]
    fn same_assignments_as_assign_new_faces() {
        let cfg = GroupConfig::default();
        let (old, new) = scene();
        let committed = group_faces(&old, &cfg, None, None).expect("group");
        assert_eq!(committed.persons.len(), 6, "{committed:?}");

        let all: Vec<FaceInput> = old.iter().chain(&new).cloned().collect();
        let expected = assign_new_faces(&all, &committed, &cfg, None).expect("assign");

        let summaries = summarise(&committed, &old, &cfg).expect("summaries");
        // Faces no person holds: the new ones and the committed run's unassigned strangers.
        let unheld: Vec<FaceInput> = all
            .iter()
            .filter(|f| {
                !committed
                    .persons
                    .iter()
                    .any(|p| p.face_ids.contains(&f.face_id))
            })
            .cloned()
            .collect();
        let got =
            assign_with_summaries(&unheld, summaries.clone(), &cfg).expect("summaries assign");
        assert_eq!(got.apply(&committed), expected);

        // The scene exercises each rule: joins, a photo conflict, a low-quality attach,
        // strangers left out.
        let person_of = |id: &str| {
            got.assigned
                .iter()
                .find(|(f, _)| f == id)
                .map(|(_, p)| p.clone())
        };
        let person_of_old = |id: &str| {
            committed
                .persons
                .iter()
                .find(|p| p.face_ids.iter().any(|f| f == id))
                .map(|p| p.person_id.clone())
        };
        assert_eq!(person_of("b-p0-1"), person_of_old("a-p0-0"));
        assert_eq!(
            person_of("b-p0-0"),
            None,
            "photo img-a-p0-3 is person 0's already"
        );
        assert_eq!(
            person_of("b-p1-1"),
            person_of_old("a-p1-0"),
            "low quality attaches"
        );
        let shared = [person_of("b-p2-0"), person_of("b-p2-1")];
        assert_eq!(
            shared.iter().filter(|p| p.is_some()).count(),
            1,
            "one photo, one face per person: {shared:?}"
        );
        for s in 0..3 {
            assert_eq!(person_of(&format!("b-s{s}")), None);
        }
    }

    #[test]
    fn updated_summaries_match_a_fresh_summary() {
        let cfg = GroupConfig::default();
        let (old, new) = scene();
        let committed = group_faces(&old, &cfg, None, None).expect("group");
        let summaries = summarise(&committed, &old, &cfg).expect("summaries");
        let got = assign_with_summaries(&new, summaries.clone(), &cfg).expect("assign");
        let groups = got.apply(&committed);
        let all: Vec<FaceInput> = old.iter().chain(&new).cloned().collect();
        let fresh = summarise(&groups, &all, &cfg).expect("fresh");
        let by_id: HashMap<&str, &PersonSummary> =
            fresh.iter().map(|s| (s.person_id.as_str(), s)).collect();
        for s in &got.summaries {
            let f = by_id[s.person_id.as_str()];
            assert_eq!((s.seeds, s.faces), (f.seeds, f.faces), "{}", s.person_id);
            assert_eq!(s.image_ids, f.image_ids);
            // Same faces, summed in another order.
            assert!(s.sum.iter().zip(&f.sum).all(|(a, b)| (a - b).abs() < 1e-4));
        }
        assert!(got
            .summaries
            .iter()
            .zip(&summaries)
            .any(|(a, b)| a.faces > b.faces));
    }

    #[test]
    fn rejects_summaries_of_another_dimension() {
        let cfg = GroupConfig::default();
        let (old, new) = scene();
        let committed = group_faces(&old, &cfg, None, None).expect("group");
        let mut summaries = summarise(&committed, &old, &cfg).expect("summaries");
        summaries[0].sum.pop();
        assert!(matches!(
            assign_with_summaries(&new, summaries.clone(), &cfg),
            Err(GroupError::DimensionMismatch { .. })
        ));
        let none = assign_with_summaries(&[], summaries.clone(), &cfg).expect("empty");
        assert!(none.assigned.is_empty() && none.unassigned.is_empty());
    }
}
