//! Discovers how an SCRFD model lays out its outputs, so one decoder serves every export:
//! the batched `[N, A, C]` outputs named `score_8`, `bbox_8`, `kps_8`, ... and the unbatched,
//! numerically named `[A, C]` outputs of InsightFace's buffalo packs (`det_10g.onnx`).

use crate::error::ModelError;

/// Whether outputs carry a leading batch axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorRank {
    /// `[N, A, C]`
    Batched,
    /// `[A, C]`
    Unbatched,
}

/// Where each head of each stride sits among the model's outputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputLayout {
    pub rank: TensorRank,
    /// Anchors per feature-map cell (2 for three-stride models, 1 for five-stride ones).
    pub anchors_per_cell: usize,
    /// Feature strides in ascending order.
    pub strides: Vec<u32>,
    /// Output index of the score head of each stride.
    pub scores: Vec<usize>,
    /// Output index of the distance-to-box head of each stride.
    pub boxes: Vec<usize>,
    /// Output index of the keypoint head of each stride, for models that have one.
    pub keypoints: Option<Vec<usize>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Head {
    Score,
    Box,
    Kps,
}

impl Head {
    fn channels(self) -> i64 {
        match self {
            Head::Score => 1,
            Head::Box => 4,
            Head::Kps => 10,
        }
    }
}

impl OutputLayout {
    /// Reads the layout from the model's output names and declared shapes (`-1` = dynamic).
    ///
    /// Outputs named `score_S`/`bbox_S`/`kps_S` are placed by name; otherwise InsightFace's
    /// positional convention applies (all score heads, then all box heads, then all keypoint
    /// heads, strides ascending). Either way the declared channel counts are checked.
    pub fn from_outputs(model: &str, outputs: &[(String, Vec<i64>)]) -> Result<Self, ModelError> {
        let err = |reason: String| ModelError::Layout {
            model: model.to_string(),
            reason,
        };
        let (strides, with_kps): (Vec<u32>, bool) = match outputs.len() {
            6 => (vec![8, 16, 32], false),
            9 => (vec![8, 16, 32], true),
            10 => (vec![8, 16, 32, 64, 128], false),
            15 => (vec![8, 16, 32, 64, 128], true),
            n => return Err(err(format!("{n} outputs; SCRFD has 6, 9, 10 or 15"))),
        };
        let anchors_per_cell = if strides.len() == 3 { 2 } else { 1 };
        let ranks: Vec<usize> = outputs.iter().map(|(_, s)| s.len()).collect();
        let rank = match ranks.as_slice() {
            [3, ..] if ranks.iter().all(|&r| r == 3) => TensorRank::Batched,
            [2, ..] if ranks.iter().all(|&r| r == 2) => TensorRank::Unbatched,
            _ => {
                return Err(err(format!(
                    "output ranks {ranks:?}; expected all 2 or all 3"
                )))
            }
        };

        let named = outputs
            .iter()
            .map(|(name, _)| parse_name(name))
            .collect::<Option<Vec<_>>>();
        let mut slots = vec![[None::<usize>; 3]; strides.len()];
        match named {
            Some(heads) => {
                for (idx, (head, stride)) in heads.into_iter().enumerate() {
                    let si = strides
                        .iter()
                        .position(|&s| s == stride)
                        .ok_or_else(|| err(format!("output {idx} has unknown stride {stride}")))?;
                    let slot = &mut slots[si][head as usize];
                    if slot.replace(idx).is_some() {
                        return Err(err(format!("two outputs for head of stride {stride}")));
                    }
                }
            }
            None => {
                let n = strides.len();
                for (si, slot) in slots.iter_mut().enumerate() {
                    slot[Head::Score as usize] = Some(si);
                    slot[Head::Box as usize] = Some(n + si);
                    if with_kps {
                        slot[Head::Kps as usize] = Some(2 * n + si);
                    }
                }
            }
        }

        let mut scores = Vec::new();
        let mut boxes = Vec::new();
        let mut keypoints = Vec::new();
        for (si, slot) in slots.iter().enumerate() {
            for head in [Head::Score, Head::Box, Head::Kps] {
                let Some(idx) = slot[head as usize] else {
                    if head == Head::Kps && !with_kps {
                        continue;
                    }
                    return Err(err(format!(
                        "no output for a head of stride {}",
                        strides[si]
                    )));
                };
                let shape = &outputs[idx].1;
                let c = shape.last().copied().unwrap_or(-1);
                if c != -1 && c != head.channels() {
                    return Err(err(format!(
                        "output {:?} has {c} channels, expected {}",
                        outputs[idx].0,
                        head.channels()
                    )));
                }
                match head {
                    Head::Score => scores.push(idx),
                    Head::Box => boxes.push(idx),
                    Head::Kps => keypoints.push(idx),
                }
            }
        }
        Ok(Self {
            rank,
            anchors_per_cell,
            strides,
            scores,
            boxes,
            keypoints: with_kps.then_some(keypoints),
        })
    }
}

/// `score_8` -> (Score, 8); `bbox_16` -> (Box, 16); `kps_32` -> (Kps, 32).
fn parse_name(name: &str) -> Option<(Head, u32)> {
    let (prefix, stride) = name.rsplit_once('_')?;
    let head = match prefix {
        "score" => Head::Score,
        "bbox" => Head::Box,
        "kps" => Head::Kps,
        _ => return None,
    };
    Some((head, stride.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outs(spec: &[(&str, &[i64])]) -> Vec<(String, Vec<i64>)> {
        spec.iter()
            .map(|(n, s)| (n.to_string(), s.to_vec()))
            .collect()
    }

    #[test]
    fn named_batched_layout_in_any_order() {
        let o = outs(&[
            ("score_8", &[1, -1, 1]),
            ("bbox_8", &[1, -1, 4]),
            ("kps_8", &[1, -1, 10]),
            ("score_16", &[1, -1, 1]),
            ("bbox_16", &[1, -1, 4]),
            ("kps_16", &[1, -1, 10]),
            ("score_32", &[1, -1, 1]),
            ("bbox_32", &[1, -1, 4]),
            ("kps_32", &[1, -1, 10]),
        ]);
        let l = OutputLayout::from_outputs("m", &o).expect("layout");
        assert_eq!(l.rank, TensorRank::Batched);
        assert_eq!(l.scores, vec![0, 3, 6]);
        assert_eq!(l.boxes, vec![1, 4, 7]);
        assert_eq!(l.keypoints, Some(vec![2, 5, 8]));
        assert_eq!(l.anchors_per_cell, 2);
    }

    #[test]
    fn positional_unbatched_layout_like_det_10g() {
        let o = outs(&[
            ("448", &[12800, 1]),
            ("471", &[3200, 1]),
            ("494", &[800, 1]),
            ("451", &[12800, 4]),
            ("474", &[3200, 4]),
            ("497", &[800, 4]),
            ("454", &[12800, 10]),
            ("477", &[3200, 10]),
            ("500", &[800, 10]),
        ]);
        let l = OutputLayout::from_outputs("det_10g", &o).expect("layout");
        assert_eq!(l.rank, TensorRank::Unbatched);
        assert_eq!(l.scores, vec![0, 1, 2]);
        assert_eq!(l.boxes, vec![3, 4, 5]);
        assert_eq!(l.keypoints, Some(vec![6, 7, 8]));
    }

    #[test]
    fn wrong_channels_and_counts_are_rejected() {
        let mut o = outs(&[
            ("a", &[-1, 1]),
            ("b", &[-1, 1]),
            ("c", &[-1, 1]),
            ("d", &[-1, 4]),
            ("e", &[-1, 4]),
            ("f", &[-1, 7]),
        ]);
        assert!(OutputLayout::from_outputs("m", &o).is_err());
        o[5].1 = vec![-1, 4];
        let l = OutputLayout::from_outputs("m", &o).expect("six-output layout");
        assert_eq!(l.keypoints, None);
        o.pop();
        assert!(OutputLayout::from_outputs("m", &o).is_err());
    }
}
