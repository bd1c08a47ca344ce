//! Person grouping: which faces belong to the same person.
//!
//! [`group_faces`] builds a kNN graph over the embeddings ([`knn`]), clusters the good
//! faces by average-linkage agglomeration over that graph with a cannot-link rule for faces of
//! the same photo ([`hac`]), keeps clusters of at least [`GroupConfig::min_cluster_size`] faces
//! as persons, then attaches leftover and low-quality faces to the person they are close enough
//! to. Person ids survive re-grouping: new clusters inherit the id of the previous person they
//! share most faces with. [`assign_new_faces`] is the cheap incremental path that only files new
//! faces under existing persons; a full [`group_faces`] re-cluster can run whenever wanted.
//!
//! Output is deterministic: faces are processed in `face_id` order whatever the input order, and
//! every tie is broken by that order.
//!
//! Measured (`facegroup eval-groups ../shared/faces/<set> --json`, SCRFD-500M + w600k_mbf with
//! the default `fast` detection, default parameters; pairwise P/R/F, BCubed P/R/F; `--folds 2`
//! rows are the identity folds; regenerated 2026-12-01):
//!
//! | set | facegroup | connected components cos >= 0.5 | DBSCAN eps 0.5, min 3 | Immich-style |
//! |---|---|---|---|---|
//! | celeba-dev | 1.000/0.936/0.967, 1.000/0.931/0.964 | 1.000/0.861/0.925, 1.000/0.853/0.921 | 1.000/0.860/0.925, 1.000/0.851/0.920 | 1.000/0.753/0.859, 1.000/0.756/0.861 |
//! | celeba-dev fold 0 / 1 | 1.000/0.941/0.970, 1.000/0.935/0.966 / 1.000/0.931/0.964, 1.000/0.926/0.962 | | | |
//! | lfw-dev | 0.995/0.996/0.996, 0.990/0.994/0.992 | 0.999/0.982/0.991, 0.998/0.969/0.983 | 0.999/0.971/0.985, 0.999/0.913/0.954 | 0.999/0.938/0.968, 0.999/0.894/0.944 |
//! | lfw-dev fold 0 / 1 | 0.999/0.996/0.997, 0.996/0.992/0.994 / 0.995/0.997/0.996, 0.997/0.995/0.996 | | | |
//!
//! Speed (`cargo bench -p facegroup-core --bench grouping -- 100000,1000000`, synthetic faces,
//! the quiet 2-core machine; lines in `docs/scale.md`): 100k uniform faces: graph 5.8 s
//! (partitioned search, same-person edge recall 0.999), clustering 1.8 s, 386 MiB peak; 1M:
//! graph 66 s, clustering 25 s, recall 0.968, 3,042 MiB. Persons of thousands of faces cost
//! `m^2 / 2` dot products to cluster (100k realistic faces: 6.3 s). Memory is O(N (d + k));
//! the embeddings belong in [`embedding_buffer`] (huge pages).

// The evaluation methods are not part of the grouping API: `eval` is for the CLI's
// `eval-groups`, tests and benches.
#[cfg(feature = "eval")]
pub mod baselines;
mod constraints;
pub mod corrections;
mod dense;
pub mod hac;
pub mod incremental;
mod int8;
pub mod knn;
mod memory;
#[cfg(feature = "eval")]
pub mod metrics;
mod mode;

use std::collections::{BTreeMap, HashMap, HashSet};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

pub use constraints::{Constraints, MustLink};
pub use corrections::{Applied, Correction, CorrectionError, Corrections, PersonFacts};
pub use hac::{Cohesion, MergeThreshold};
pub use knn::{KnnConfig, KnnGraph};
pub use memory::embedding_buffer;
pub use mode::{regroup, GroupMode};

/// One face to group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaceInput {
    /// Unique id of the face.
    pub face_id: String,
    /// The photo the face is in: faces of one photo are never the same person.
    pub image_id: String,
    /// Face embedding (normalised again here, so any positive scale is accepted).
    pub embedding: Vec<f32>,
    /// False for faces with failed quality checks (`Quality::reasons` non-empty).
    #[serde(default = "default_true")]
    pub quality_ok: bool,
    /// Overall quality 0-1 (`Quality::overall`); ranks representatives and, with
    /// [`GroupConfig::min_quality`], marks faces as low quality.
    #[serde(default = "default_one")]
    pub quality: f32,
}

fn default_true() -> bool {
    true
}

fn default_one() -> f32 {
    1.0
}

/// One person: at least `min_cluster_size` faces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Person {
    pub person_id: String,
    /// Sorted face ids.
    pub face_ids: Vec<String>,
    /// The face to show for the person: its best-quality seed face.
    pub representative: String,
    /// The name a user gave the person ([`Corrections`]); the grouping itself never sets it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl Person {
    /// A person of the given faces (sorted here) shown by its first face: for persons made
    /// outside the grouping (corrections, tests); the grouping picks the best seed face instead.
    pub fn with_faces<S: Into<String>>(
        person_id: impl Into<String>,
        face_ids: impl IntoIterator<Item = S>,
    ) -> Self {
        let mut face_ids: Vec<String> = face_ids.into_iter().map(Into::into).collect();
        face_ids.sort_unstable();
        Person {
            person_id: person_id.into(),
            representative: face_ids.first().cloned().unwrap_or_default(),
            face_ids,
            name: None,
        }
    }
}

/// The result of grouping.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Groups {
    /// Largest first, then by first face id.
    pub persons: Vec<Person>,
    /// Sorted ids of faces that belong to no person.
    pub unassigned: Vec<String>,
}

impl Groups {
    /// Every face of the grouping: the persons' and the unassigned ones.
    pub fn face_count(&self) -> usize {
        self.persons.iter().map(|p| p.face_ids.len()).sum::<usize>() + self.unassigned.len()
    }
}

/// Grouping parameters. The defaults were chosen by identity-level 2-fold cross-validation
/// inside the dev sets (`facegroup eval-groups --folds 2` with a grid over pair 0.35/0.40,
/// attach 0.15/0.25, cohesion ratio 0.4/0.5 and prior 0.3/0.5 at merge 0.10): on lfw-dev the
/// tuning rule (best BCubed F at pairwise precision >= 0.995) picks the same point on either
/// fold, pair 0.40, merge 0.10, attach 0.25, cohesion 0.50 with prior 0.50, and the figures
/// above are that point on each held fold. CelebA alone prefers a lower attach threshold and
/// prior, which lose 2-6 points of pairwise precision on LFW's many lookalike strangers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GroupConfig {
    pub knn: KnnConfig,
    /// Average cosine similarity two single faces need to merge (see [`MergeThreshold`]).
    pub pair_threshold: f32,
    /// Average cosine similarity two large clusters need to merge; between the two, the
    /// threshold falls with the clusters' sizes as `1 / sqrt(|A| |B|)`. Low, because the
    /// cohesion test (`cohesion_ratio`) guards large merges.
    pub merge_threshold: f32,
    /// Weakest kNN edge that makes two clusters candidates for a merge. Default 0.20. The
    /// linkage itself is exact over all face pairs (see [`hac`]); this only decides which
    /// cluster pairs are scored. Same-person clusters are joined by many edges well above it,
    /// while a face's weak edges (its nearest strangers, 0.10-0.20) made clustering re-score
    /// every stranger next to a growing person after each merge: at 0.10, 100k synthetic faces
    /// took 10.4 s to cluster, at 0.20 2.9 s, and the dev sets' figures did not change in the
    /// fourth decimal (`eval-groups --folds 2`, every fold).
    pub link_threshold: f32,
    /// Like `merge_threshold`, for a low-quality face joining a cluster of good faces after
    /// clustering: it needs `attach + (pair - attach) / sqrt(|cluster|)`.
    pub attach_threshold: f32,
    /// Lowest ratio of two clusters' cross similarity to their own cohesion that may merge
    /// (see [`Cohesion`]); 0 disables the test.
    pub cohesion_ratio: f32,
    /// Cohesion assumed for a single face (see [`Cohesion::prior`]).
    pub cohesion_prior: f32,
    /// Weight of `cohesion_prior`, in ordered face pairs.
    pub cohesion_prior_pairs: f32,
    /// Fewest faces a person needs (clusters below it are left unassigned). Default 2.
    pub min_cluster_size: usize,
    /// Faces with `quality` below this are low quality even when `quality_ok`. Default 0.
    pub min_quality: f32,
}

impl Default for GroupConfig {
    fn default() -> Self {
        Self {
            knn: KnnConfig::default(),
            pair_threshold: 0.40,
            merge_threshold: 0.10,
            attach_threshold: 0.25,
            link_threshold: 0.20,
            cohesion_ratio: 0.50,
            cohesion_prior: 0.50,
            cohesion_prior_pairs: 2.0,
            min_cluster_size: 2,
            min_quality: 0.0,
        }
    }
}

impl GroupConfig {
    fn merge(&self) -> MergeThreshold {
        MergeThreshold {
            pair: self.pair_threshold,
            floor: self.merge_threshold,
        }
    }

    /// The cohesion test of the merges (see [`Cohesion`]).
    pub fn cohesion(&self) -> Cohesion {
        Cohesion {
            ratio: self.cohesion_ratio,
            prior: self.cohesion_prior,
            prior_pairs: self.cohesion_prior_pairs,
        }
    }

    fn attach(&self) -> MergeThreshold {
        MergeThreshold {
            pair: self.pair_threshold,
            floor: self.attach_threshold,
        }
    }
}

/// Why faces could not be grouped.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error("face {face_id}: embedding has {got} values, expected {expected}")]
    DimensionMismatch {
        face_id: String,
        got: usize,
        expected: usize,
    },
    #[error("face {face_id}: embedding is zero or not finite")]
    BadEmbedding { face_id: String },
    #[error("face id {0} appears more than once")]
    DuplicateFaceId(String),
    #[error("FAISS: {0}")]
    Faiss(String),
}

/// Groups all faces from scratch. With `previous`, persons that continue keep their ids; with
/// `constraints`, the user's corrections hold (see [`Constraints`]).
pub fn group_faces(
    faces: &[FaceInput],
    cfg: &GroupConfig,
    previous: Option<&Groups>,
    constraints: Option<&Constraints>,
) -> Result<Groups, GroupError> {
    let set = FaceSet::new(faces, cfg, constraints)?;
    let graph = KnnGraph::build(&set.data, set.dim, &cfg.knn)?;
    let must_link: Vec<Vec<usize>> = set.must_link.iter().map(|(f, _)| f.clone()).collect();
    let roots = hac::average_linkage(&hac::HacInput {
        data: &set.data,
        dim: set.dim,
        images: &set.images,
        tags: &set.tags,
        seeds: &set.seeds,
        must_link: &must_link,
        graph: &graph,
        link: cfg.link_threshold,
        threshold: cfg.merge(),
        cohesion: cfg.cohesion(),
    });
    let mut members: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, &r) in roots.iter().enumerate() {
        if set.seeds[i] {
            members.entry(r).or_default().push(i);
        }
    }
    let mut clusters: Vec<Cluster> = members
        .into_values()
        .map(|m| Cluster::new(&set, m))
        .collect();
    // Low-quality faces join clusters of good faces only after clustering, so they cannot
    // start a cluster or join two; a good face plus a poor photo of the same person may still
    // make a person, which matters when a person has only two photos.
    let leftovers: Vec<usize> = (0..set.len()).filter(|&i| !set.seeds[i]).collect();
    attach(&set, &graph, &mut clusters, &leftovers, |_| {
        (cfg.attach(), Cohesion::OFF)
    });
    set.pin(&mut clusters);
    // A cluster holding a must-link group is a person the user made, whatever its size.
    let persons: Vec<Cluster> = clusters
        .into_iter()
        .filter(|c| {
            c.members.len() + c.attached.len() >= cfg.min_cluster_size.max(1)
                || c.members.iter().any(|&i| set.linked[i])
        })
        .collect();
    Ok(finish(&set, persons, previous))
}

/// Files faces that no person holds yet under the existing persons of `previous`, without
/// re-clustering: a face joins the person whose seed faces it matches best on average, at the
/// merge threshold for good faces (as a merge of a one-face cluster would) and the attach
/// threshold for low-quality ones. `faces` must include the faces of `previous`' persons (their
/// embeddings define the persons); faces of `previous` missing from `faces` are dropped. With
/// `constraints`: a person loses a face that a cannot-link forbids next to its others (the face
/// is filed again), new faces must-linked to a person's face join it, and pinned ids hold.
pub fn assign_new_faces(
    faces: &[FaceInput],
    previous: &Groups,
    cfg: &GroupConfig,
    constraints: Option<&Constraints>,
) -> Result<Groups, GroupError> {
    let set = FaceSet::new(faces, cfg, constraints)?;
    let index = set.index();
    let mut persons: Vec<Cluster> = Vec::new();
    let mut held = vec![false; set.len()];
    for p in &previous.persons {
        let Some((all, mut c)) = set.seed_cluster(&index, &p.face_ids) else {
            continue;
        };
        for &i in &all {
            held[i] = true;
        }
        let rest: Vec<usize> = all
            .iter()
            .copied()
            .filter(|i| !c.members.contains(i))
            .collect();
        c.add_attached(&set, rest.into_iter());
        c.previous_id = Some(p.person_id.clone());
        persons.push(c);
    }
    set.follow_links(&mut persons, &mut held);
    let leftovers: Vec<usize> = (0..set.len()).filter(|&i| !held[i]).collect();
    let graph = KnnGraph::build(&set.data, set.dim, &cfg.knn)?;
    attach(&set, &graph, &mut persons, &leftovers, |i| {
        if set.seeds[i] {
            (cfg.merge(), cfg.cohesion())
        } else {
            (cfg.attach(), Cohesion::OFF)
        }
    });
    set.pin(&mut persons);
    Ok(finish(&set, persons, Some(previous)))
}

/// Validated faces in `face_id` order with unit embeddings, and the constraints on them.
struct FaceSet {
    ids: Vec<String>,
    data: Vec<f32>,
    dim: usize,
    images: Vec<u32>,
    /// Sorted exclusion tags of each face: its photo, then its cannot-link tags.
    tags: Vec<Vec<u32>>,
    seeds: Vec<bool>,
    quality: Vec<f32>,
    /// Must-link groups (face indices) with their pinned person ids.
    must_link: Vec<(Vec<usize>, Option<String>)>,
    /// Whether each face is in a must-link group.
    linked: Vec<bool>,
}

impl FaceSet {
    /// Face id -> position in the set.
    fn index(&self) -> HashMap<&str, usize> {
        self.ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.as_str(), i))
            .collect()
    }

    /// A stored person's faces that are in the set, and the cluster of its seed faces (all of
    /// them when it has no seed face: a person of low-quality faces still stands for them);
    /// `None` when none of its faces is in the set. A face whose exclusion tags clash with the
    /// person's earlier faces (a cannot-link made after the person) is left out.
    fn seed_cluster(
        &self,
        index: &HashMap<&str, usize>,
        face_ids: &[String],
    ) -> Option<(Vec<usize>, Cluster)> {
        let mut found: Vec<usize> = face_ids
            .iter()
            .filter_map(|id| index.get(id.as_str()).copied())
            .collect();
        found.sort_unstable();
        let mut all: Vec<usize> = Vec::with_capacity(found.len());
        let mut seen: HashSet<u32> = HashSet::new();
        for i in found {
            // Two faces of one photo in a stored person (an older run's mistake, or a hand
            // edit) are kept as before; only cannot-link tags remove faces.
            let clash = self.tags[i]
                .iter()
                .any(|t| *t != self.images[i] && seen.contains(t));
            if !clash {
                seen.extend(self.tags[i].iter().copied());
                all.push(i);
            }
        }
        if all.is_empty() {
            return None;
        }
        let seeds: Vec<usize> = all.iter().copied().filter(|&i| self.seeds[i]).collect();
        let members = if seeds.is_empty() { all.clone() } else { seeds };
        let cluster = Cluster::new(self, members);
        Some((all, cluster))
    }

    fn new(
        faces: &[FaceInput],
        cfg: &GroupConfig,
        constraints: Option<&Constraints>,
    ) -> Result<Self, GroupError> {
        let mut order: Vec<&FaceInput> = faces.iter().collect();
        order.sort_by(|a, b| a.face_id.cmp(&b.face_id));
        if let Some(w) = order.windows(2).find(|w| w[0].face_id == w[1].face_id) {
            return Err(GroupError::DuplicateFaceId(w[0].face_id.clone()));
        }
        let dim = order.first().map_or(0, |f| f.embedding.len());
        let mut data = embedding_buffer(order.len() * dim);
        for f in &order {
            if f.embedding.len() != dim {
                return Err(GroupError::DimensionMismatch {
                    face_id: f.face_id.clone(),
                    got: f.embedding.len(),
                    expected: dim,
                });
            }
            let norm = dot(&f.embedding, &f.embedding).sqrt();
            if !norm.is_finite() || norm <= 0.0 {
                return Err(GroupError::BadEmbedding {
                    face_id: f.face_id.clone(),
                });
            }
            data.extend(f.embedding.iter().map(|x| x / norm));
        }
        let mut photo_ids: Vec<&str> = order.iter().map(|f| f.image_id.as_str()).collect();
        photo_ids.sort_unstable();
        photo_ids.dedup();
        let images: Vec<u32> = order
            .iter()
            .map(|f| photo_ids.binary_search(&f.image_id.as_str()).unwrap_or(0) as u32)
            .collect();
        let ids: Vec<String> = order.iter().map(|f| f.face_id.clone()).collect();
        let mut seeds: Vec<bool> = order
            .iter()
            .map(|f| f.quality_ok && f.quality >= cfg.min_quality)
            .collect();
        let resolved = match constraints {
            Some(c) if !c.is_empty() => {
                let index: HashMap<&str, usize> = ids
                    .iter()
                    .enumerate()
                    .map(|(i, id)| (id.as_str(), i))
                    .collect();
                constraints::Resolved::new(c, &index, ids.len(), photo_ids.len() as u32)
            }
            _ => constraints::Resolved::default(),
        };
        let mut linked = vec![false; ids.len()];
        // The user vouched for must-linked faces: they count as good faces.
        for &i in resolved.groups.iter().flat_map(|(f, _)| f) {
            linked[i] = true;
            seeds[i] = true;
        }
        let tags = images
            .iter()
            .enumerate()
            .map(|(i, &p)| {
                let mut t = vec![p];
                if let Some(extra) = resolved.tags.get(i) {
                    t.extend_from_slice(extra);
                }
                t
            })
            .collect();
        Ok(Self {
            ids,
            data,
            dim,
            images,
            tags,
            seeds,
            quality: order.iter().map(|f| f.quality).collect(),
            must_link: resolved.groups,
            linked,
        })
    }

    /// Gives each cluster holding a pinned must-link group's first face that group's person
    /// id (as an explicit id, like an incremental run's).
    fn pin(&self, clusters: &mut [Cluster]) {
        for (faces, id) in &self.must_link {
            let Some(id) = id else { continue };
            if let Some(c) = clusters
                .iter_mut()
                .find(|c| c.members.contains(&faces[0]) || c.attached.contains(&faces[0]))
            {
                c.previous_id = Some(id.clone());
            }
        }
    }

    /// Incremental runs: faces must-linked to a face a person holds join that person (as seed
    /// faces) unless their tags clash with it.
    fn follow_links(&self, persons: &mut [Cluster], held: &mut [bool]) {
        for (faces, _) in &self.must_link {
            let Some(p) = persons.iter().position(|c| {
                faces
                    .iter()
                    .any(|i| c.members.contains(i) || c.attached.contains(i))
            }) else {
                continue;
            };
            for &i in faces {
                if !held[i] && !self.tags[i].iter().any(|t| persons[p].photos.contains(t)) {
                    persons[p].add_member(self, i);
                    held[i] = true;
                }
            }
        }
    }

    fn len(&self) -> usize {
        self.ids.len()
    }

    fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }
}

/// A person under construction: seed members define its embedding sum; attached faces join
/// it but never change it, so a poor face cannot drag a person towards someone else.
struct Cluster {
    members: Vec<usize>,
    attached: Vec<usize>,
    sum: Vec<f32>,
    photos: HashSet<u32>,
    previous_id: Option<String>,
}

impl Cluster {
    fn new(set: &FaceSet, members: Vec<usize>) -> Self {
        let mut sum = vec![0.0; set.dim];
        for &i in &members {
            for (s, x) in sum.iter_mut().zip(set.row(i)) {
                *s += x;
            }
        }
        let photos = members
            .iter()
            .flat_map(|&i| set.tags[i].iter().copied())
            .collect();
        Self {
            members,
            attached: Vec::new(),
            sum,
            photos,
            previous_id: None,
        }
    }

    fn add_attached(&mut self, set: &FaceSet, faces: impl Iterator<Item = usize>) {
        for i in faces {
            self.photos.extend(set.tags[i].iter().copied());
            self.attached.push(i);
        }
    }

    /// Adds seed face `i` (its embedding joins the sum).
    fn add_member(&mut self, set: &FaceSet, i: usize) {
        for (s, x) in self.sum.iter_mut().zip(set.row(i)) {
            *s += x;
        }
        self.photos.extend(set.tags[i].iter().copied());
        self.members.push(i);
    }

    /// Mean cosine similarity of face `i` to the seed members.
    fn linkage(&self, set: &FaceSet, i: usize) -> f32 {
        dot(&self.sum, set.row(i)) / self.members.len() as f32
    }
}

/// Attaches each leftover face to the best cluster among those of its graph neighbours, if its
/// mean similarity to that cluster's seeds passes `rule(face)` (the threshold at the cluster's
/// size and the cohesion test, the face counting as a one-face cluster) and the cluster has no
/// face from the same photo. Best matches claim photos first, so two faces of one photo competing
/// for a person are resolved by similarity, not input order.
fn attach(
    set: &FaceSet,
    graph: &KnnGraph,
    persons: &mut [Cluster],
    leftovers: &[usize],
    rule: impl Fn(usize) -> (MergeThreshold, Cohesion) + Sync,
) {
    let mut person_of = vec![usize::MAX; set.len()];
    for (p, c) in persons.iter().enumerate() {
        for &i in c.members.iter().chain(&c.attached) {
            person_of[i] = p;
        }
    }
    let persons_ro: &[Cluster] = persons;
    let norm2: Vec<f32> = persons.iter().map(|c| dot(&c.sum, &c.sum)).collect();
    let mut offers: Vec<(f32, usize, Vec<usize>)> = leftovers
        .par_iter()
        .filter_map(|&i| {
            let mut candidates: Vec<usize> = graph
                .row(i)
                .map(|(j, _)| person_of[j])
                .filter(|&p| p != usize::MAX)
                .collect();
            candidates.sort_unstable();
            candidates.dedup();
            let (threshold, cohesion) = rule(i);
            let mut scored: Vec<(f32, usize)> = candidates
                .into_iter()
                .map(|p| (persons_ro[p].linkage(set, i), p))
                .filter(|&(s, p)| {
                    let size = persons_ro[p].members.len() as u32;
                    s >= threshold.at(1, size)
                        && cohesion.allows(s, cohesion.of(1.0, 1), cohesion.of(norm2[p], size))
                })
                .collect();
            scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            let best = scored.first()?.0;
            Some((best, i, scored.into_iter().map(|(_, p)| p).collect()))
        })
        .collect();
    offers.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    for (_, i, candidates) in offers {
        if let Some(&p) = candidates
            .iter()
            .find(|&&p| !set.tags[i].iter().any(|t| persons[p].photos.contains(t)))
        {
            persons[p].add_attached(set, std::iter::once(i));
        }
    }
}

/// Orders persons, picks representatives and ids, and lists the unassigned faces.
fn finish(set: &FaceSet, persons: Vec<Cluster>, previous: Option<&Groups>) -> Groups {
    let mut built: Vec<(Vec<usize>, usize, Option<String>)> = persons
        .into_iter()
        .map(|c| {
            let representative = representative(set, &c);
            let mut all = c.members;
            all.extend(c.attached);
            all.sort_unstable();
            (all, representative, c.previous_id)
        })
        .collect();
    // Face indices follow face_id order, so this is size, then first face id.
    built.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0[0].cmp(&b.0[0])));
    let ids = person_ids(set, &built, previous);
    let mut assigned = vec![false; set.len()];
    let persons = built
        .into_iter()
        .zip(ids)
        .map(|((members, rep, _), person_id)| {
            for &i in &members {
                assigned[i] = true;
            }
            Person {
                person_id,
                face_ids: members.iter().map(|&i| set.ids[i].clone()).collect(),
                representative: set.ids[rep].clone(),
                name: None,
            }
        })
        .collect();
    let unassigned = (0..set.len())
        .filter(|&i| !assigned[i])
        .map(|i| set.ids[i].clone())
        .collect();
    Groups {
        persons,
        unassigned,
    }
}

/// The seed face with the best quality; ties go to the face nearest the person's mean.
fn representative(set: &FaceSet, c: &Cluster) -> usize {
    let mut best = c.members[0];
    let mut best_key = (f32::NEG_INFINITY, f32::NEG_INFINITY);
    for &i in &c.members {
        let key = (set.quality[i], dot(&c.sum, set.row(i)));
        if key.0 > best_key.0 || (key.0 == best_key.0 && key.1 > best_key.1) {
            best = i;
            best_key = key;
        }
    }
    best
}

/// Ids for the ordered persons: an explicit previous id (incremental mode) is kept; otherwise
/// persons and previous persons are paired greedily by the number of shared faces (most
/// first), and the rest get fresh `person-N` ids numbered after every previous one.
fn person_ids(
    set: &FaceSet,
    built: &[(Vec<usize>, usize, Option<String>)],
    previous: Option<&Groups>,
) -> Vec<String> {
    let mut ids: Vec<Option<String>> = built.iter().map(|b| b.2.clone()).collect();
    let empty = Groups::default();
    let previous = previous.unwrap_or(&empty);
    let mut taken: HashSet<String> = ids.iter().flatten().cloned().collect();
    let owner: HashMap<&str, usize> = previous
        .persons
        .iter()
        .enumerate()
        .flat_map(|(p, person)| person.face_ids.iter().map(move |f| (f.as_str(), p)))
        .collect();
    let mut overlaps: Vec<(usize, usize, usize)> = Vec::new();
    for (c, (members, _, explicit)) in built.iter().enumerate() {
        if explicit.is_some() {
            continue;
        }
        let mut counts: BTreeMap<usize, usize> = BTreeMap::new();
        for &i in members {
            if let Some(&p) = owner.get(set.ids[i].as_str()) {
                *counts.entry(p).or_default() += 1;
            }
        }
        overlaps.extend(counts.into_iter().map(|(p, n)| (n, c, p)));
    }
    overlaps.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    for (_, c, p) in overlaps {
        let id = &previous.persons[p].person_id;
        if ids[c].is_none() && !taken.contains(id) {
            taken.insert(id.clone());
            ids[c] = Some(id.clone());
        }
    }
    let mut next = previous
        .persons
        .iter()
        .filter_map(|p| p.person_id.strip_prefix("person-")?.parse::<u64>().ok())
        .max()
        .unwrap_or(0)
        + 1;
    ids.into_iter()
        .map(|id| {
            id.unwrap_or_else(|| loop {
                let candidate = format!("person-{next}");
                next += 1;
                if !taken.contains(&candidate) {
                    break candidate;
                }
            })
        })
        .collect()
}

/// Dot product with eight independent sums, which the compiler turns into SIMD (a single
/// running sum must keep its order and cannot be vectorised). On CPUs with AVX the same code is
/// compiled for 8-wide registers (chosen at run time: the release binary ships to other
/// machines): lane for lane the same multiplies and adds in the same order, so the result is
/// bit-identical to the SSE2 build, only twice as wide. FMA is not enabled: fusing would round
/// differently, and these dots decide the merges. (The graph's similarities from
/// [`dense`]'s products may differ in the last bits between AVX-512 and AVX2 kernels; they
/// only choose which pairs are scored.)
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: the CPU has AVX (checked just above).
        return unsafe { dot_avx(a, b) };
    }
    dot_lanes(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn dot_avx(a: &[f32], b: &[f32]) -> f32 {
    dot_lanes(a, b)
}

#[inline(always)]
fn dot_lanes(a: &[f32], b: &[f32]) -> f32 {
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    let mut acc = [0.0f32; 8];
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Asks the CPU to start loading `row` into the cache (no effect on results).
///
/// Why: the refinement and the clustering take dot products with embedding rows in graph
/// order, i.e. scattered over memory (2 GiB at 1M faces, far beyond the caches). One row is 2
/// KiB, 32 cache lines that a plain loop fetches one miss after another; naming the next row's
/// lines while the current dot product runs keeps many loads in flight instead of one.
#[inline]
pub(crate) fn prefetch<T>(row: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        let start = row.as_ptr().cast::<i8>();
        for offset in (0..std::mem::size_of_val(row)).step_by(64) {
            // SAFETY: a prefetch is a hint: it reads nothing into the program and cannot
            // fault; the address is inside `row` anyway. SSE is part of x86_64.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                    start.wrapping_add(offset),
                );
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = row;
}
