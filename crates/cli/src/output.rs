//! The files `facegroup run` writes into its output folder:
//!
//! - `faces.jsonl`: one `facegroup_core::FaceRecord` per face (box, keypoints, score, quality,
//!   embedding) with its crop and person;
//! - `images.jsonl`: one record per image, `"status": "ok"` or `"failed"` with the error;
//! - `crops/<image path>.<face index>.jpg`: each face's aligned crop.
//!
//! Records follow the sorted image order, so two runs over the same folder give identical files.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use facegroup_core::{Face, FaceRecord};
use serde::Serialize;

use crate::engine::ImageResult;

/// Folder under the output folder holding the face crops.
pub const CROPS_DIR: &str = "crops";

/// Crop location relative to the output folder. Appending `.<index>.jpg` to the image's own
/// relative path keeps names unique without any escaping and mirrors the photo folder layout.
pub fn crop_path(image: &str, index: usize) -> String {
    format!("{CROPS_DIR}/{image}.{index}.jpg")
}

/// Writes every face crop of one image as JPEG under `out_dir`.
pub fn write_crops(out_dir: &Path, image: &str, faces: &[Face]) -> Result<()> {
    for face in faces {
        let path = out_dir.join(crop_path(image, face.index));
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        face.crop
            .save_with_format(&path, image::ImageFormat::Jpeg)
            .with_context(|| format!("cannot write crop {}", path.display()))?;
    }
    Ok(())
}

/// Writes `faces.jsonl` and `images.jsonl`; `names[i]` is the relative name of `results[i]`.
/// `persons` maps face ids to person ids (empty when grouping is off).
pub fn write_records(
    out_dir: &Path,
    model_version: &str,
    names: &[String],
    results: &[ImageResult],
    persons: &HashMap<String, String>,
) -> Result<()> {
    let mut faces = JsonLines::create(out_dir.join("faces.jsonl"))?;
    let mut images = JsonLines::create(out_dir.join("images.jsonl"))?;
    for (name, result) in names.iter().zip(results) {
        match &result.outcome {
            Ok(analyzed) => {
                for face in &analyzed.faces {
                    faces.write(&FaceLine::new(name, model_version, face, persons))?;
                }
                images.write(&ImageRecord {
                    image: name,
                    width: Some(analyzed.width),
                    height: Some(analyzed.height),
                    faces: analyzed.faces.len(),
                    status: "ok",
                    error: None,
                })?;
            }
            Err(error) => images.write(&ImageRecord {
                image: name,
                width: None,
                height: None,
                faces: 0,
                status: "failed",
                error: Some(error),
            })?,
        }
    }
    faces.finish()?;
    images.finish()
}

/// A line of `faces.jsonl`: the stored face record plus where its crop is and its person.
#[derive(Serialize)]
struct FaceLine<'a> {
    #[serde(flatten)]
    record: FaceRecord,
    /// The crop's path relative to the output folder.
    crop: String,
    /// The person the face was grouped into; null when unassigned or not grouped.
    person_id: Option<&'a str>,
}

impl<'a> FaceLine<'a> {
    fn new(
        image: &str,
        model_version: &str,
        face: &Face,
        persons: &'a HashMap<String, String>,
    ) -> Self {
        let record = FaceRecord::new(image, model_version, face);
        Self {
            person_id: persons.get(&record.face_id).map(String::as_str),
            crop: crop_path(image, face.index),
            record,
        }
    }
}

#[derive(Serialize)]
struct ImageRecord<'a> {
    image: &'a str,
    width: Option<u32>,
    height: Option<u32>,
    faces: usize,
    status: &'static str,
    error: Option<&'a str>,
}

/// A buffered JSON Lines file that names itself in every error.
struct JsonLines {
    path: PathBuf,
    out: BufWriter<File>,
}

impl JsonLines {
    fn create(path: PathBuf) -> Result<Self> {
        let file =
            File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Self {
            path,
            out: BufWriter::new(file),
        })
    }

    fn write(&mut self, record: &impl Serialize) -> Result<()> {
        serde_json::to_writer(&mut self.out, record)
            .map_err(anyhow::Error::from)
            .and_then(|()| Ok(self.out.write_all(b"\n")?))
            .with_context(|| format!("cannot write {}", self.path.display()))
    }

    fn finish(mut self) -> Result<()> {
        self.out
            .flush()
            .with_context(|| format!("cannot write {}", self.path.display()))
    }
}
