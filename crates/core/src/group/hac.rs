//! Average-linkage agglomerative clustering on the sparse kNN graph, with cannot-link.
//!
//! Why average linkage: connected components (single linkage) merges two people as soon as one
//! pair of their faces looks alike, so one blurry or look-alike face chains whole identities
//! together. Average linkage merges two clusters only when their faces agree *on average*,
//! which a single stray pair cannot achieve, yet a person's hard faces (profile, make-up, age)
//! still join because they are judged against the whole cluster, not against one face.
//!
//! Why it is cheap: for unit vectors the mean pairwise cosine of clusters A and B is
//! `dot(sum A, sum B) / (|A| |B|)`, so the *exact* average linkage of any two clusters costs
//! one d-dimensional dot product given each cluster's embedding sum. The kNN graph only
//! decides which clusters are compared (those joined by an edge at or above `link`, never
//! below the lowest threshold, since a mean at or above it needs at least one pair at or above
//! it); the linkage is never truncated by `k`, so large clusters are not penalised for pairs
//! outside the graph.
//!
//! Cost: each merge re-scores the merged cluster against every cluster it has an edge to, one
//! dot product each, so a person of `m` faces costs about `m * a` dot products, `a` its
//! clusters' adjacency. With `link` at the merge floor (0.10) `a` was most of the person's
//! `m k` edges, its faces' nearest strangers included (`m^2 k / 2` in all); at 0.20 strangers
//! are rarely adjacent and `a` is about the person's own remaining clusters.
//!
//! The candidates wait in a bucket queue ([`Queue`]: buckets by linkage, a small binary heap
//! each) rather than one binary heap, and stale ones are purged once they are half of it: at
//! 1M faces 16M candidates are queued, and one heap's pops through ~24 levels of cold memory
//! were half of the clustering's time. Dot products with scattered rows prefetch the next
//! row ([`super::prefetch`]). Neither changes a result.
//!
//! Why a cohesion test on top of the size-aware threshold: the threshold alone lets two large
//! clusters merge at an average of `floor`, because the average of many pairs of strangers is
//! near zero; but relatives and lookalikes are not strangers. A 530-photo person and a 12-photo
//! sibling had a mean cross cosine of 0.29, well above any workable floor, while the person's
//! own faces average 0.61. Two halves of one person have a cross similarity close to their
//! internal similarity; two relatives are far below it. [`Cohesion`] turns that into a test that
//! costs one more number per cluster (`|sum|^2`, updated on merge from the cross dot product
//! already computed), so the linkage stays one dot product and the speed is unchanged. A merge
//! needs both: the size-aware threshold (enough evidence that the clusters are alike at all) and
//! the cohesion ratio (as alike as each is to itself). Verdicts are taken when a pair is pushed,
//! and every pair of a cluster that changes is pushed again, so they always see current sums.
//!
//! Cannot-link: clusters sharing a photo never merge. Clusters only grow, so once two
//! clusters conflict every later pair containing them conflicts too, and a conflicting
//! candidate can simply be dropped.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::dot;
use super::knn::KnnGraph;

/// Faces to cluster: `data` holds unit embeddings row-major, `images[i]` the photo of face `i`,
/// `tags[i]` its sorted exclusion tags (its photo and its cannot-link tags: clusters sharing a
/// tag never merge), `seeds[i]` whether face `i` takes part (low-quality faces do not), and
/// `must_link` groups of seed faces merged before anything else (see `super::constraints`).
pub struct HacInput<'a> {
    pub data: &'a [f32],
    pub dim: usize,
    pub images: &'a [u32],
    pub tags: &'a [Vec<u32>],
    pub seeds: &'a [bool],
    pub must_link: &'a [Vec<usize>],
    pub graph: &'a KnnGraph,
    /// Weakest graph edge that makes two clusters candidates (never below the lowest merge
    /// threshold, since a mean needs at least one pair at or above it).
    pub link: f32,
    pub threshold: MergeThreshold,
    pub cohesion: Cohesion,
}

/// The average linkage two clusters need to merge, by their sizes.
///
/// Why it depends on size: the mean similarity of two clusters of different people is an
/// average over |A| |B| pairs, so its spread around the (near zero) mean shrinks roughly as
/// 1 / sqrt(|A| |B|), while two halves of one person keep their typical similarity however
/// large they are. Two single faces therefore need strong evidence (`pair`, where look-alike
/// strangers are the risk), large clusters only a clear margin (`floor`, where a person's
/// varied poses, ages and make-up are the risk):
/// `floor + (pair - floor) / sqrt(|A| |B|)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MergeThreshold {
    pub pair: f32,
    pub floor: f32,
}

impl MergeThreshold {
    pub fn at(&self, size_a: u32, size_b: u32) -> f32 {
        let scale = (size_a as f32 * size_b as f32).max(1.0).sqrt();
        self.floor + (self.pair - self.floor).max(0.0) / scale
    }

    /// The lowest threshold any pair of clusters can face.
    pub fn lowest(&self) -> f32 {
        self.floor.min(self.pair)
    }
}

/// The cohesion test: two clusters merge only when their cross similarity is close to what
/// each cluster shows inside itself.
///
/// For unit vectors a cluster of `n` faces with embedding sum `S` has mean internal pairwise
/// cosine `(|S|^2 - n) / (n (n - 1))`, an unbiased estimate of `|mu|^2` for the person's mean
/// direction `mu`; the cross linkage of A and B estimates `mu_A . mu_B`. So
/// `linkage / sqrt(c_A c_B)` estimates the cosine between the two clusters' mean directions:
/// near 1 for two halves of one person, far below for relatives (a 530-photo person with
/// internal mean 0.61 and a sibling at cross mean 0.29 score about 0.48). Small clusters have
/// noisy cohesion, so each is shrunk towards `prior` with the weight of `prior_pairs` ordered
/// pairs; a single face's cohesion is `prior`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cohesion {
    /// Lowest `linkage / sqrt(c_A c_B)` that may merge (0 disables the test).
    pub ratio: f32,
    /// Cohesion assumed for a cluster without evidence (a single face).
    pub prior: f32,
    /// Weight of `prior`, in ordered face pairs.
    pub prior_pairs: f32,
}

impl Cohesion {
    /// The test switched off (size-aware threshold only).
    pub const OFF: Self = Self {
        ratio: 0.0,
        prior: 0.5,
        prior_pairs: 1.0,
    };

    /// Shrunk mean internal cosine of a cluster of `n` faces whose sum has squared norm `norm2`.
    pub fn of(&self, norm2: f32, n: u32) -> f32 {
        let n = n as f32;
        let pairs = n * (n - 1.0);
        let c = (norm2 - n + self.prior_pairs * self.prior) / (pairs + self.prior_pairs);
        c.max(0.0)
    }

    /// Whether `linkage` is close enough to the two cohesions.
    pub fn allows(&self, linkage: f32, cohesion_a: f32, cohesion_b: f32) -> bool {
        linkage >= self.ratio * (cohesion_a * cohesion_b).sqrt()
    }
}

/// Merges clusters in decreasing order of average linkage until no pair reaches its threshold.
/// Returns each face's cluster root (the smallest face index of its cluster); faces that are not
/// seeds map to themselves.
pub fn average_linkage(input: &HacInput<'_>) -> Vec<usize> {
    let HacInput {
        data,
        dim,
        images,
        tags,
        seeds,
        must_link,
        graph,
        link,
        threshold,
        cohesion,
    } = *input;
    let n = images.len();
    let mut state = State {
        data,
        slot: vec![NO_SLOT; n],
        sums: Vec::new(),
        free: Vec::new(),
        dim,
        norm2: vec![1.0; n],
        cohesion,
        size: vec![1; n],
        tags,
        photos: vec![Vec::new(); n],
        version: vec![0; n],
        parent: (0..n).collect(),
    };
    let mut adjacent = adjacency(graph, seeds, images, link.max(threshold.lowest()));
    let mut heap = Queue::new(threshold.lowest(), n);
    for (i, adj) in adjacent.iter().enumerate() {
        let later = adj.partition_point(|&j| (j as usize) <= i);
        for (at, &j) in adj[later..].iter().enumerate() {
            if let Some(&next) = adj.get(later + at + 1) {
                super::prefetch(state.sum(next as usize));
            }
            state.push_if_close(&mut heap, i, j as usize, threshold);
        }
    }

    // Must-link groups first, whatever their similarity; a face whose tags conflict with the
    // group so far stays out of it.
    for group in must_link {
        let Some(&first) = group.first() else {
            continue;
        };
        for &f in &group[1..] {
            let (a, b) = (state.root(first), state.root(f));
            if a != b && !state.share_photo(a, b) {
                join(&mut state, &mut adjacent, &mut heap, a, b, threshold);
            }
        }
    }
    while let Some(c) = heap.pop() {
        if state.stale(&c) {
            heap.stale = heap.stale.saturating_sub(1);
            continue;
        }
        if state.share_photo(c.a as usize, c.b as usize) {
            continue;
        }
        let (a, b) = (c.a as usize, c.b as usize);
        join(&mut state, &mut adjacent, &mut heap, a, b, threshold);
        // Candidates of a cluster go stale when it merges; at 1M faces most of those queued
        // are. Dropping them once they are half the queue costs one pass over it each time
        // and keeps its memory near what is live (live candidates and their order untouched).
        if heap.len >= PURGE_MIN && heap.stale >= heap.len / 2 {
            heap.retain(|c| !state.stale(c));
        }
    }
    tracing::debug!(
        faces = n,
        pushed = heap.pushed,
        peak_queue = heap.peak,
        purged = heap.purged,
        peak_sums = state.sums.len() / dim.max(1),
        "average linkage"
    );
    // A merge always points the larger index at the smaller, so parents precede children and
    // one increasing pass resolves every root.
    let mut roots: Vec<usize> = state.parent;
    for i in 0..n {
        roots[i] = roots[roots[i]];
    }
    roots
}

/// Each seed face's sorted, de-duplicated list of the seed faces it shares a graph edge >=
/// `floor` with (either direction), other photos only.
///
/// Built in one flat buffer (counted, filled, then each face's part sorted and de-duplicated:
/// mutual edges appear twice) and copied into lists of their exact size; the flat buffer is
/// one allocation, handed back to the system when dropped. At 1M faces, lists allocated at
/// their count before de-duplication held twice what they needed, and shrinking 1M small
/// lists afterwards left the difference behind as fragments of the allocator's heap.
fn adjacency(graph: &KnnGraph, seeds: &[bool], images: &[u32], floor: f32) -> Vec<Vec<u32>> {
    let n = images.len();
    let edges = |i: usize| {
        graph
            .row(i)
            .filter(move |&(j, s)| seeds[i] && seeds[j] && s >= floor && images[i] != images[j])
            .map(|(j, _)| j)
    };
    let mut starts = vec![0usize; n + 1];
    for i in 0..n {
        for j in edges(i) {
            starts[i + 1] += 1;
            starts[j + 1] += 1;
        }
    }
    for i in 0..n {
        starts[i + 1] += starts[i];
    }
    let mut flat = vec![0u32; starts[n]];
    let mut fill = starts.clone();
    for i in 0..n {
        for j in edges(i) {
            flat[fill[i]] = j as u32;
            fill[i] += 1;
            flat[fill[j]] = i as u32;
            fill[j] += 1;
        }
    }
    drop(fill);
    (0..n)
        .map(|i| {
            let row = &mut flat[starts[i]..starts[i + 1]];
            row.sort_unstable();
            let mut kept = 0;
            for r in 0..row.len() {
                if kept == 0 || row[r] != row[kept - 1] {
                    row[kept] = row[r];
                    kept += 1;
                }
            }
            row[..kept].to_vec()
        })
        .collect()
}

/// Merges live clusters `a` and `b` and queues the merged cluster's pairs with its neighbours.
fn join(
    state: &mut State<'_>,
    adjacent: &mut [Vec<u32>],
    heap: &mut Queue,
    a: usize,
    b: usize,
    threshold: MergeThreshold,
) {
    // Keep the smaller index as the cluster's id so results do not depend on heap order.
    let (keep, gone) = (a.min(b), a.max(b));
    heap.forget(keep);
    heap.forget(gone);
    state.merge(keep, gone);
    let mut before = std::mem::take(&mut adjacent[keep]);
    before.sort_unstable();
    before.dedup();
    // Lists are kept at (about) their length: a million of them, each grown by doubling,
    // would hold twice the adjacency's memory. `gone`'s list is freed, not just emptied.
    let gone_list = std::mem::take(&mut adjacent[gone]);
    let mut merged = Vec::with_capacity(before.len() + gone_list.len());
    merged.extend_from_slice(&before);
    merged.extend_from_slice(&gone_list);
    drop(gone_list);
    merged.retain(|&c| {
        let c = c as usize;
        c != keep && c != gone && state.parent[c] == c
    });
    merged.sort_unstable();
    merged.dedup();
    merged.shrink_to_fit();
    for (at, &c) in merged.iter().enumerate() {
        if let Some(&next) = merged.get(at + 1) {
            super::prefetch(state.sum(next as usize));
        }
        // A neighbour `keep` already had holds `keep` in its own list (adjacency is kept
        // symmetric); pushing it again on every merge of a large cluster grew each of its
        // neighbours' lists by one entry per merge (m^2 entries for a person of m faces).
        if before.binary_search(&c).is_err() {
            let list = &mut adjacent[c as usize];
            if list.len() == list.capacity() {
                list.reserve_exact(list.len() / 4 + 1);
            }
            list.push(keep as u32);
        }
        state.push_if_close(heap, keep, c as usize, threshold);
    }
    adjacent[keep] = merged;
}

/// `State::slot` of a cluster that is still one face: its sum is its row of `data`.
const NO_SLOT: u32 = u32::MAX;

/// Live clusters, indexed by their root face. Embedding sums are stored only for clusters of two
/// or more faces (`slot` -> `sums`, slots of absorbed clusters reused); a single face's sum is
/// its row of `data`, so clustering adds no second copy of the embeddings.
struct State<'a> {
    data: &'a [f32],
    slot: Vec<u32>,
    sums: Vec<f32>,
    free: Vec<u32>,
    dim: usize,
    /// `|sum|^2` of each live cluster (its cohesion, see [`Cohesion`]).
    norm2: Vec<f32>,
    cohesion: Cohesion,
    size: Vec<u32>,
    /// Sorted exclusion tags (photo ids, cannot-link tags) of each live cluster.
    photos: Vec<Vec<u32>>,
    /// Each face's own tags: a cluster of one face reads its tags here, so clustering copies
    /// no tag list until clusters merge.
    tags: &'a [Vec<u32>],
    version: Vec<u32>,
    parent: Vec<usize>,
}

/// Smallest queue worth purging of stale candidates.
const PURGE_MIN: usize = 1 << 20;

impl State<'_> {
    /// Whether a cluster of `c` was absorbed or has changed since `c` was scored.
    fn stale(&self, c: &Candidate) -> bool {
        let (a, b) = (c.a as usize, c.b as usize);
        self.parent[a] != a
            || self.parent[b] != b
            || self.version[a].wrapping_add(self.version[b]) != c.versions
    }

    /// `dot(sum A, sum B)`: the sum of all cross-pair similarities of clusters `a` and `b`.
    fn cross(&self, a: usize, b: usize) -> f32 {
        dot(self.sum(a), self.sum(b))
    }

    fn cohesion(&self, a: usize) -> f32 {
        self.cohesion.of(self.norm2[a], self.size[a])
    }

    /// Embedding sum of the live cluster rooted at `a`.
    fn sum(&self, a: usize) -> &[f32] {
        let d = self.dim;
        match self.slot[a] {
            NO_SLOT => &self.data[a * d..(a + 1) * d],
            s => &self.sums[s as usize * d..(s as usize + 1) * d],
        }
    }

    /// True when clusters `a` and `b` share an exclusion tag (a photo or a cannot-link).
    fn share_photo(&self, a: usize, b: usize) -> bool {
        super::constraints::intersect(self.tags_of(a), self.tags_of(b))
    }

    /// Sorted exclusion tags of the live cluster rooted at `a`.
    fn tags_of(&self, a: usize) -> &[u32] {
        if self.size[a] == 1 {
            &self.tags[a]
        } else {
            &self.photos[a]
        }
    }

    /// The live cluster face `i` belongs to.
    fn root(&self, mut i: usize) -> usize {
        while self.parent[i] != i {
            i = self.parent[i];
        }
        i
    }

    fn push_if_close(&self, heap: &mut Queue, a: usize, b: usize, threshold: MergeThreshold) {
        let linkage = self.cross(a, b) / (self.size[a] as f32 * self.size[b] as f32);
        if linkage >= threshold.at(self.size[a], self.size[b])
            && self
                .cohesion
                .allows(linkage, self.cohesion(a), self.cohesion(b))
            && !self.share_photo(a, b)
        {
            heap.push(Candidate {
                linkage,
                a: a.min(b) as u32,
                b: a.max(b) as u32,
                versions: self.version[a].wrapping_add(self.version[b]),
            });
        }
    }

    fn merge(&mut self, keep: usize, gone: usize) {
        self.norm2[keep] += self.norm2[gone] + 2.0 * self.cross(keep, gone);
        let d = self.dim;
        if self.slot[keep] == NO_SLOT {
            let s = match self.free.pop() {
                Some(s) => s,
                None => {
                    self.sums.resize(self.sums.len() + d, 0.0);
                    (self.sums.len() / d - 1) as u32
                }
            };
            let at = s as usize * d;
            self.sums[at..at + d].copy_from_slice(&self.data[keep * d..(keep + 1) * d]);
            self.slot[keep] = s;
        }
        let at = self.slot[keep] as usize * d;
        let gone_slot = std::mem::replace(&mut self.slot[gone], NO_SLOT);
        if gone_slot == NO_SLOT {
            let row = &self.data[gone * d..(gone + 1) * d];
            for (x, y) in self.sums[at..at + d].iter_mut().zip(row) {
                *x += y;
            }
        } else {
            let g = gone_slot as usize * d;
            let (into, from) = if at < g {
                let (head, tail) = self.sums.split_at_mut(g);
                (&mut head[at..at + d], &tail[..d])
            } else {
                let (head, tail) = self.sums.split_at_mut(at);
                (&mut tail[..d], &head[g..g + d])
            };
            for (x, y) in into.iter_mut().zip(from) {
                *x += y;
            }
            self.free.push(gone_slot);
        }
        // Before the sizes change: a single face's tags are read from `tags`.
        let mut photos = std::mem::take(&mut self.photos[keep]);
        if self.size[keep] == 1 {
            photos.extend_from_slice(&self.tags[keep]);
        }
        if self.size[gone] == 1 {
            photos.extend_from_slice(&self.tags[gone]);
        } else {
            photos.append(&mut self.photos[gone]);
        }
        photos.sort_unstable();
        self.photos[keep] = photos;
        self.size[keep] += self.size[gone];
        self.version[keep] += 1;
        self.parent[gone] = keep;
    }
}

/// The merge candidates, popped in [`Candidate`]'s order (highest linkage first), as a bucket
/// queue: buckets by linkage, each a binary heap, the highest non-empty one popped.
///
/// Why not one binary heap: at 1M faces tens of millions of candidates are queued (most go
/// stale before they are popped), and each pop of a heap that large sifts through ~24 levels
/// of cold memory, which took more of the clustering's time than scoring the linkages. A
/// bucket holds candidates of nearly equal linkage, so pops work in a small heap that stays in
/// the cache. Buckets are ranges of the linkage's total order, so the pop order is exactly the
/// one heap's, ties included: results are unchanged. An emptied bucket frees its memory.
struct Queue {
    buckets: Vec<BinaryHeap<Candidate>>,
    /// Order key of the lowest bucket's start; lower linkages go to bucket 0.
    lo: u32,
    shift: u32,
    /// No bucket above `top` holds anything.
    top: usize,
    len: usize,
    pushed: usize,
    peak: usize,
    /// Stale candidates dropped by [`Queue::retain`].
    purged: usize,
    /// Candidates queued per cluster since it last changed, and an estimate of the stale
    /// candidates in the queue (when to purge; it does not affect results).
    queued: Vec<u32>,
    stale: usize,
}

impl Queue {
    /// Buckets from `lowest` (the lowest merge threshold, under which nothing is queued) to a
    /// linkage of 1; at most [`MAX_BUCKETS`], each at least 256 ulps wide.
    fn new(lowest: f32, clusters: usize) -> Self {
        let (lo, hi) = (order_key(lowest.min(1.0)), order_key(1.0));
        let mut shift = 8;
        while (hi - lo) >> shift >= MAX_BUCKETS as u32 {
            shift += 1;
        }
        let count = ((hi - lo) >> shift) as usize + 2;
        Self {
            buckets: (0..count).map(|_| BinaryHeap::new()).collect(),
            lo,
            shift,
            top: 0,
            len: 0,
            pushed: 0,
            peak: 0,
            purged: 0,
            queued: vec![0; clusters],
            stale: 0,
        }
    }

    fn push(&mut self, c: Candidate) {
        let b = ((order_key(c.linkage).saturating_sub(self.lo) >> self.shift) as usize)
            .min(self.buckets.len() - 1);
        self.buckets[b].push(c);
        count_queued(&mut self.queued, &c);
        self.top = self.top.max(b);
        self.len += 1;
        self.pushed += 1;
        self.peak = self.peak.max(self.len);
    }

    /// Keeps only the candidates `keep` accepts, and frees the rest's memory.
    fn retain(&mut self, mut keep: impl FnMut(&Candidate) -> bool) {
        let before = self.len;
        self.len = 0;
        self.queued.fill(0);
        for bucket in &mut self.buckets {
            bucket.retain(&mut keep);
            bucket.shrink_to_fit();
            self.len += bucket.len();
            for c in bucket.iter() {
                count_queued(&mut self.queued, c);
            }
        }
        self.purged += before - self.len;
        self.stale = 0;
    }

    /// Cluster `x` is changing: its queued candidates are stale from now on.
    fn forget(&mut self, x: usize) {
        if let Some(q) = self.queued.get_mut(x) {
            self.stale += std::mem::take(q) as usize;
        }
    }

    fn pop(&mut self) -> Option<Candidate> {
        loop {
            if let Some(c) = self.buckets[self.top].pop() {
                if self.buckets[self.top].is_empty() {
                    self.buckets[self.top] = BinaryHeap::new();
                }
                self.len -= 1;
                return Some(c);
            }
            self.top = self.top.checked_sub(1)?;
        }
    }
}

const MAX_BUCKETS: usize = 1 << 16;

/// Counts queued candidate `c` for both its clusters ([`Queue::queued`]).
fn count_queued(queued: &mut [u32], c: &Candidate) {
    for x in [c.a, c.b] {
        if let Some(q) = queued.get_mut(x as usize) {
            *q = q.saturating_add(1);
        }
    }
}

/// `f32::total_cmp`'s order as an unsigned key.
fn order_key(x: f32) -> u32 {
    let bits = x.to_bits();
    if bits >> 31 == 1 {
        !bits
    } else {
        bits | 1 << 31
    }
}

/// A possible merge; the heap pops the highest linkage, ties broken by smaller indices so the
/// order is fully determined by the input.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    linkage: f32,
    a: u32,
    b: u32,
    /// The sum of both clusters' versions when the candidate was scored. Versions only grow,
    /// so an equal sum means neither cluster changed since (16 bytes a candidate, not 20:
    /// tens of millions are queued at 1M faces).
    versions: u32,
}

impl Ord for Candidate {
    fn cmp(&self, other: &Self) -> Ordering {
        self.linkage
            .total_cmp(&other.linkage)
            .then_with(|| (other.a, other.b).cmp(&(self.a, self.b)))
    }
}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Candidate {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Candidate {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_pops_in_one_heaps_order() {
        // Ties, values below the lowest bucket and above 1, pushes between pops: the bucket
        // queue must give exactly the order of one binary heap.
        let mut rng = facegroup_testkit::Rng::new(7);
        let mut queue = Queue::new(0.1, 50);
        let mut heap = BinaryHeap::new();
        let mut popped = (Vec::new(), Vec::new());
        for step in 0..20_000u32 {
            let linkage = match rng.next_u64() % 4 {
                0 => 0.5,
                1 => rng.uniform() * 1.2 - 0.1,
                _ => 0.3 + (rng.next_u64() % 1000) as f32 * 1e-6,
            };
            let c = Candidate {
                linkage,
                a: (rng.next_u64() % 50) as u32,
                b: (rng.next_u64() % 50) as u32,
                versions: step,
            };
            queue.push(c);
            heap.push(c);
            if step == 10_000 {
                // A purge keeps the order of what it keeps.
                queue.retain(|c| c.versions % 2 == 0);
                heap.retain(|c| c.versions % 2 == 0);
                assert_eq!(queue.len, heap.len());
            }
            if step % 3 == 0 {
                popped
                    .0
                    .push(queue.pop().map(|c| (c.linkage, c.a, c.b, c.versions)));
                popped
                    .1
                    .push(heap.pop().map(|c| (c.linkage, c.a, c.b, c.versions)));
            }
        }
        while let Some(c) = heap.pop() {
            popped.1.push(Some((c.linkage, c.a, c.b, c.versions)));
        }
        while let Some(c) = queue.pop() {
            popped.0.push(Some((c.linkage, c.a, c.b, c.versions)));
        }
        assert_eq!(popped.0.len(), popped.1.len());
        // Candidates equal in linkage and indices may come out in either order (the heap does
        // not order them either); compare without the version stamp there.
        let key = |v: &Vec<Option<(f32, u32, u32, u32)>>| -> Vec<(u32, u32, u32)> {
            v.iter()
                .flatten()
                .map(|c| (c.0.to_bits(), c.1, c.2))
                .collect()
        };
        assert_eq!(key(&popped.0), key(&popped.1));
        assert_eq!(queue.len, 0);
    }
}
