//! `--detection-agreement`: how the chosen detection mode compares with `exact` (InsightFace's
//! 640x640 letterbox) where it matters for grouping.
//!
//! Per subset: of the photos whose labelled face `exact` finds, the share where this mode finds
//! the same face (labelled boxes overlapping at IoU >= 0.5), the photos only this mode finds a
//! labelled face in, and facegroup's BCubed F at the default settings on each mode's
//! embeddings. The `fast` default must keep the first >= 99.5% and the F within 0.003.

use anyhow::Result;
use facegroup_core::group::GroupConfig;
use facegroup_core::BBox;
use serde_json::json;

use super::cache::Photo;
use super::dataset::Subset;
use super::methods::{self, Faces};
use super::Labelled;

/// Prints the agreement of `photos` (this mode) with `exact` (the same items in exact mode).
pub fn report(
    set: &Labelled<'_>,
    photos: &[Option<Photo>],
    exact: &[Option<Photo>],
    subsets: &[Subset],
    mode: &str,
) -> Result<()> {
    let Labelled {
        items,
        identity,
        name: dataset,
        json,
    } = *set;
    let cfg = GroupConfig::default();
    for subset in subsets {
        let (mut exact_found, mut same, mut only_this) = (0usize, 0usize, 0usize);
        for &i in &subset.items {
            let a = photos[i].as_ref().and_then(Photo::labelled);
            let e = exact[i].as_ref().and_then(Photo::labelled);
            match (a, e) {
                (Some(a), Some(e)) => {
                    exact_found += 1;
                    same += usize::from(iou(&a.bbox, &e.bbox) >= 0.5);
                }
                (None, Some(_)) => exact_found += 1,
                (Some(_), None) => only_this += 1,
                (None, None) => {}
            }
        }
        let f = |p: &[Option<Photo>]| -> Result<f64> {
            let faces = Faces::new(items, identity, p, subset, false);
            Ok(methods::facegroup(&faces, &cfg)?.scores.bcubed.f)
        };
        let (f_mode, f_exact) = (f(photos)?, f(exact)?);
        let share = same as f64 / exact_found.max(1) as f64;
        if json {
            println!(
                "{}",
                json!({
                    "dataset": dataset,
                    "subset": subset.name,
                    "detection_agreement": {
                        "mode": mode,
                        "exact_found": exact_found,
                        "found_too": same,
                        "share": share,
                        "found_only_by_mode": only_this,
                        "bcubed_f": f_mode,
                        "bcubed_f_exact": f_exact,
                    }
                })
            );
        } else {
            println!(
                "{dataset} {}: {mode} finds the labelled face in {same} of the {exact_found} \
                 photos where exact does ({:.2}%), and in {only_this} where exact does not; \
                 BCubed F {f_mode:.4} ({mode}) vs {f_exact:.4} (exact)",
                subset.name,
                share * 100.0
            );
        }
    }
    Ok(())
}

/// Core's [`BBox::iou`] of two cached `[x1, y1, x2, y2]` boxes.
fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let bbox = |r: &[f32; 4]| BBox {
        x1: r[0],
        y1: r[1],
        x2: r[2],
        y2: r[3],
    };
    bbox(a).iou(&bbox(b))
}
