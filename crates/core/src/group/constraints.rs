//! User corrections as grouping constraints: what people tell a gallery app about its persons
//! ("these are one person", "this face is not her", "this is Ana") must survive every later
//! grouping, full or incremental, or users stop correcting.
//!
//! - **Must-link** groups (a merge, a move): their faces are merged into one cluster before the
//!   agglomeration starts, whatever their similarity, and count as good faces (the user vouched
//!   for them), so the cluster may grow but never loses them. A group with a person id (a named
//!   person) gives the person holding its faces that id, and two such persons never merge.
//! - **Cannot-link** pairs ("not this person", a split): the two faces never share a person. This
//!   is the rule faces of one photo already follow, so it reuses it: every face carries a sorted
//!   list of exclusion tags (its photo, plus one tag per cannot-link pair it is in), and two
//!   clusters whose tag sets intersect never merge, nor does a face attach to such a person.
//!
//! Conflicts resolve towards separation: a must-link face that would put two faces of one tag
//! into one cluster is left out of that group (it is grouped on its own merits). Face ids that
//! are not in the grouped set are ignored, so constraints may outlive deleted faces.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// Constraints on a grouping run (see the module docs). Empty by default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Constraints {
    pub must_link: Vec<MustLink>,
    /// Face id pairs that never share a person.
    pub cannot_link: Vec<(String, String)>,
}

/// Faces that end in one person; with `person_id`, that person keeps the id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MustLink {
    pub face_ids: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub person_id: Option<String>,
}

impl Constraints {
    pub fn is_empty(&self) -> bool {
        self.must_link.is_empty() && self.cannot_link.is_empty()
    }
}

/// Constraints in face indices of one face set.
#[derive(Debug, Default)]
pub(super) struct Resolved {
    /// Must-link groups (overlapping groups united), faces in index order, each with its pinned
    /// person id (the first one given, when several were).
    pub groups: Vec<(Vec<usize>, Option<String>)>,
    /// Extra exclusion tags per face (numbered from `first_tag`), sorted.
    pub tags: Vec<Vec<u32>>,
}

impl Resolved {
    /// Resolves `c` against the faces `index` knows (`n` faces); cannot-link tags start at
    /// `first_tag`, after the photo ids.
    pub fn new(
        c: &Constraints,
        index: &HashMap<&str, usize>,
        n: usize,
        first_tag: u32,
    ) -> Resolved {
        let mut tags: Vec<Vec<u32>> = vec![Vec::new(); n];
        let mut next = first_tag;
        let mut exclude = |a: usize, b: usize, tags: &mut Vec<Vec<u32>>| {
            if a != b {
                tags[a].push(next);
                tags[b].push(next);
                next += 1;
            }
        };
        for (a, b) in &c.cannot_link {
            if let (Some(&a), Some(&b)) = (index.get(a.as_str()), index.get(b.as_str())) {
                exclude(a, b, &mut tags);
            }
        }
        // Union of overlapping must-link groups, by the group each face was first seen in.
        let mut group_of: HashMap<usize, usize> = HashMap::new();
        let mut parent: Vec<usize> = Vec::new();
        let mut faces: Vec<Vec<usize>> = Vec::new();
        let mut pinned: Vec<Option<String>> = Vec::new();
        fn root(parent: &mut [usize], mut g: usize) -> usize {
            while parent[g] != g {
                parent[g] = parent[parent[g]];
                g = parent[g];
            }
            g
        }
        for m in &c.must_link {
            let g = parent.len();
            parent.push(g);
            faces.push(Vec::new());
            pinned.push(m.person_id.clone());
            for id in &m.face_ids {
                let Some(&i) = index.get(id.as_str()) else {
                    continue;
                };
                match group_of.get(&i) {
                    Some(&h) => {
                        let (rg, rh) = (root(&mut parent, g), root(&mut parent, h));
                        if rg != rh {
                            let (keep, gone) = (rg.min(rh), rg.max(rh));
                            parent[gone] = keep;
                            let moved = std::mem::take(&mut faces[gone]);
                            faces[keep].extend(moved);
                            if pinned[keep].is_none() {
                                pinned[keep] = pinned[gone].take();
                            }
                        }
                    }
                    None => {
                        group_of.insert(i, g);
                        let r = root(&mut parent, g);
                        faces[r].push(i);
                    }
                }
            }
        }
        let mut groups: Vec<(Vec<usize>, Option<String>)> = Vec::new();
        for g in 0..parent.len() {
            if parent[g] == g && !faces[g].is_empty() {
                let mut f = std::mem::take(&mut faces[g]);
                f.sort_unstable();
                f.dedup();
                groups.push((f, pinned[g].take()));
            }
        }
        groups.sort_by_key(|(f, _)| f[0]);
        // Two named persons are two people: their first faces never share a person.
        let firsts: Vec<usize> = groups
            .iter()
            .filter(|(_, id)| id.is_some())
            .map(|(f, _)| f[0])
            .collect();
        for (k, &a) in firsts.iter().enumerate() {
            for &b in &firsts[k + 1..] {
                exclude(a, b, &mut tags);
            }
        }
        for t in &mut tags {
            t.sort_unstable();
        }
        Resolved { groups, tags }
    }
}

/// True when two sorted tag lists share a tag.
pub(super) fn intersect(a: &[u32], b: &[u32]) -> bool {
    let (small, large) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    small.iter().any(|t| large.binary_search(t).is_ok())
}
