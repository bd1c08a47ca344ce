//! The files `facegroup run` writes next to its store (`facegroup.db`, see [`crate::store`]),
//! and that `facegroup export` writes on request. They are exports of the store, in the shapes
//! earlier versions wrote as their only output, so scripts reading them keep working:
//!
//! - `faces.jsonl`: one `facegroup_core::FaceRecord` per face (box, keypoints, score, quality,
//!   embedding) with its crop and person;
//! - `images.jsonl`: one record per image, `"status": "ok"` or `"failed"` with the error;
//! - `crops/<image path>.<face index>.jpg`: each face's aligned crop.
//!
//! Records follow the sorted image order, so two stores of the same folder give identical files.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{Context, Result};
use facegroup_core::group::Groups;
use facegroup_core::{Face, FaceRecord};
use serde::Serialize;

use crate::report;
use crate::store::{RunDetails, Store, StoredImage};

/// The exports' file names in the output folder.
pub const FACES_FILE: &str = "faces.jsonl";
pub const IMAGES_FILE: &str = "images.jsonl";
pub const GROUPS_FILE: &str = "groups.json";

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

/// Writes the exports of the library into `out_dir`: `faces.jsonl`, `images.jsonl` and, when
/// there is a grouping, `groups.json`.
pub fn write_exports(
    out_dir: &Path,
    images: &[StoredImage],
    groups: Option<&Groups>,
) -> Result<()> {
    let persons = person_of(groups);
    write_file(&out_dir.join(FACES_FILE), |w| {
        write_faces(w, images, &persons)
    })?;
    write_file(&out_dir.join(IMAGES_FILE), |w| write_images(w, images))?;
    if let Some(groups) = groups {
        write_file(&out_dir.join(GROUPS_FILE), |w| write_groups(w, groups))?;
    }
    Ok(())
}

/// Writes the exports (when `exports`) and the report from the store, with the stored grouping
/// unless `grouped` is false: how `run` ends and what `forget` redoes. Returns what it wrote.
pub fn write_outputs(
    out_dir: &Path,
    store: &Store,
    details: &RunDetails,
    exports: bool,
    grouped: bool,
) -> Result<(Vec<StoredImage>, Option<Groups>)> {
    let images = store.images()?;
    let groups = if grouped { store.groups()? } else { None };
    if exports {
        write_exports(out_dir, &images, groups.as_ref())?;
    }
    report::write(
        out_dir,
        details,
        &images,
        groups.as_ref(),
        &store.person_names()?,
    )?;
    Ok((images, groups))
}

/// `faces.jsonl`: one line per face, in image then index order.
pub fn write_faces(
    w: &mut dyn Write,
    images: &[StoredImage],
    persons: &HashMap<String, String>,
) -> Result<()> {
    for face in images.iter().flat_map(|i| &i.faces) {
        write_line(
            w,
            &FaceLine {
                person_id: persons.get(&face.face_id).map(String::as_str),
                crop: crop_path(&face.image_id, face.index as usize),
                record: face,
            },
        )?;
    }
    Ok(())
}

/// `images.jsonl`: one line per image, `"status": "ok"` or `"failed"` with the error.
pub fn write_images(w: &mut dyn Write, images: &[StoredImage]) -> Result<()> {
    for image in images {
        write_line(
            w,
            &ImageRecord {
                image: &image.name,
                width: image.width,
                height: image.height,
                faces: image.faces.len(),
                status: if image.error.is_some() {
                    "failed"
                } else {
                    "ok"
                },
                error: image.error.as_deref(),
            },
        )?;
    }
    Ok(())
}

/// `groups.json`: `facegroup_core::group::Groups`, pretty-printed.
pub fn write_groups(w: &mut dyn Write, groups: &Groups) -> Result<()> {
    serde_json::to_writer_pretty(&mut *w, groups)?;
    Ok(())
}

/// face id -> person id.
pub fn person_of(groups: Option<&Groups>) -> HashMap<String, String> {
    groups
        .map(|g| {
            g.persons
                .iter()
                .flat_map(|p| p.face_ids.iter().map(|f| (f.clone(), p.person_id.clone())))
                .collect()
        })
        .unwrap_or_default()
}

/// Removes every crop of an image. The crops' folder is listed rather than the indices counted
/// from 0: forgetting a person leaves gaps in a photo's face indices.
pub fn remove_crops(out_dir: &Path, image: &str) -> Result<()> {
    let first = out_dir.join(crop_path(image, 0));
    let (Some(dir), Some(base)) = (first.parent(), Path::new(image).file_name()) else {
        return Ok(());
    };
    let prefix = format!("{}.", base.to_string_lossy());
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot list {}", dir.display())),
    };
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let index = name
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(".jpg"))
            .and_then(|n| n.parse::<u32>().ok());
        if let Some(index) = index {
            remove_crop(out_dir, image, index)?;
        }
    }
    Ok(())
}

/// Removes one face's crop; a crop already gone is fine.
pub fn remove_crop(out_dir: &Path, image: &str, index: u32) -> Result<()> {
    let path = out_dir.join(crop_path(image, index as usize));
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", path.display())),
    }
}

/// A line of `faces.jsonl`: the stored face record plus where its crop is and its person.
#[derive(Serialize)]
struct FaceLine<'a> {
    #[serde(flatten)]
    record: &'a FaceRecord,
    /// The crop's path relative to the output folder.
    crop: String,
    /// The person the face was grouped into; null when unassigned or not grouped.
    person_id: Option<&'a str>,
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

fn write_line(w: &mut dyn Write, record: &impl Serialize) -> Result<()> {
    serde_json::to_writer(&mut *w, record)?;
    w.write_all(b"\n")?;
    Ok(())
}

/// Writes `path` through a buffer, naming it in any error.
pub fn write_file(path: &Path, body: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<()> {
    let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut out = BufWriter::new(file);
    body(&mut out)
        .and_then(|()| Ok(out.flush()?))
        .with_context(|| format!("cannot write {}", path.display()))
}
