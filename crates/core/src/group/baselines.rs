//! The methods person grouping is measured against, on the same embeddings: connected
//! components of a similarity threshold, DBSCAN, and Immich's incremental assignment.
//! All take exact radius neighbourhoods ([`radius_neighbours`]) or the kNN graph's edges above
//! a threshold ([`graph_neighbours`]) and return a cluster id per face (`None` = unassigned).

use rayon::prelude::*;

use super::dot;
use super::knn::KnnGraph;

/// Neighbours of each face with their cosine similarity, nearest first.
pub type Neighbourhoods = Vec<Vec<(u32, f32)>>;

/// Every other face within `min_similarity`, by exhaustive comparison (O(N^2 d); for
/// evaluation-sized sets, where a baseline should not be limited by `k`).
pub fn radius_neighbours(data: &[f32], dim: usize, min_similarity: f32) -> Neighbourhoods {
    let rows: Vec<&[f32]> = data.chunks_exact(dim).collect();
    rows.par_iter()
        .enumerate()
        .map(|(i, q)| {
            let mut hits: Vec<(u32, f32)> = rows
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != i)
                .map(|(j, v)| (j as u32, dot(q, v)))
                .filter(|&(_, s)| s >= min_similarity)
                .collect();
            hits.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            hits
        })
        .collect()
}

/// The kNN graph's edges at or above `min_similarity`.
pub fn graph_neighbours(graph: &KnnGraph, min_similarity: f32) -> Neighbourhoods {
    (0..graph.len())
        .map(|i| {
            graph
                .row(i)
                .filter(|&(_, s)| s >= min_similarity)
                .map(|(j, s)| (j as u32, s))
                .collect()
        })
        .collect()
}

/// Connected components of the neighbourhood graph; components under `min_size` are
/// unassigned.
pub fn connected_components(nb: &Neighbourhoods, min_size: usize) -> Vec<Option<u32>> {
    let n = nb.len();
    let mut parent: Vec<usize> = (0..n).collect();
    fn find(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    for (i, row) in nb.iter().enumerate() {
        for &(j, _) in row {
            let (a, b) = (find(&mut parent, i), find(&mut parent, j as usize));
            if a != b {
                parent[a.max(b)] = a.min(b);
            }
        }
    }
    let roots: Vec<usize> = (0..n).map(|i| find(&mut parent, i)).collect();
    relabel(&roots.into_iter().map(Some).collect::<Vec<_>>(), min_size)
}

/// DBSCAN as scikit-learn defines it: a face is a core point when it has at least
/// `min_samples` faces (itself included) within the radius; clusters are the cores reachable
/// through each other plus the border faces they reach; the rest is noise (unassigned).
pub fn dbscan(nb: &Neighbourhoods, min_samples: usize) -> Vec<Option<u32>> {
    let n = nb.len();
    let core: Vec<bool> = nb.iter().map(|r| r.len() + 1 >= min_samples).collect();
    let mut label: Vec<Option<u32>> = vec![None; n];
    let mut next = 0u32;
    for start in 0..n {
        if !core[start] || label[start].is_some() {
            continue;
        }
        label[start] = Some(next);
        let mut stack = vec![start];
        while let Some(i) = stack.pop() {
            for &(j, _) in &nb[i] {
                let j = j as usize;
                if label[j].is_none() {
                    label[j] = Some(next);
                    if core[j] {
                        stack.push(j);
                    }
                }
            }
        }
        next += 1;
    }
    label
}

/// Immich's face clustering (server `person` service, `handleRecognizeFaces`): faces are taken
/// in order; a face with at least `min_faces` faces (itself included) among its `min_faces`
/// nearest within the distance is a core face and joins the person of the nearest such match
/// (or of the nearest assigned face within the distance), founding a new person if there is
/// none; other faces are deferred to a second pass where they may only join an existing person.
/// `nb` must hold the neighbours within Immich's `maxDistance`, nearest first.
pub fn immich(nb: &Neighbourhoods, min_faces: usize) -> Vec<Option<u32>> {
    let n = nb.len();
    let mut person: Vec<Option<u32>> = vec![None; n];
    let mut next = 0u32;
    let mut deferred = Vec::new();
    let nearest_person = |person: &[Option<u32>], i: usize, limit: usize| {
        nb[i]
            .iter()
            .take(limit)
            .find_map(|&(j, _)| person[j as usize])
    };
    for i in 0..n {
        // Immich's search returns the face itself first, so `min_faces - 1` others.
        let matches = nb[i].len().min(min_faces.saturating_sub(1)) + 1;
        if matches < min_faces {
            deferred.push(i);
            continue;
        }
        let found = nearest_person(&person, i, min_faces.saturating_sub(1))
            .or_else(|| nearest_person(&person, i, usize::MAX));
        person[i] = Some(found.unwrap_or_else(|| {
            next += 1;
            next - 1
        }));
    }
    for i in deferred {
        person[i] = nearest_person(&person, i, usize::MAX);
    }
    person
}

/// Dense ids in first-appearance order for groups of at least `min_size` members.
fn relabel(groups: &[Option<usize>], min_size: usize) -> Vec<Option<u32>> {
    let mut count = std::collections::HashMap::new();
    for g in groups.iter().flatten() {
        *count.entry(*g).or_insert(0usize) += 1;
    }
    let mut ids = std::collections::HashMap::new();
    groups
        .iter()
        .map(|g| {
            let g = (*g)?;
            if count[&g] < min_size.max(1) {
                return None;
            }
            let next = ids.len() as u32;
            Some(*ids.entry(g).or_insert(next))
        })
        .collect()
}
