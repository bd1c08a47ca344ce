//! The embedding cache: every detected face of every photo, so re-runs (parameter sweeps,
//! folds, `--all-faces`) only re-cluster.
//!
//! Two files per dataset and model pair, keyed by the dataset's path, the models and the photo
//! count: `faces-<key>.bin` (format 2: every face with its box, which `--all-faces` needs) and
//! `cache-<key>.bin` (format 1: the labelled face of each photo only, the format older builds
//! read and write, kept so a shared cache folder serves both). Files are written aside and
//! renamed, so an interrupted run never leaves a truncated cache; a file that is missing,
//! corrupt or for another key reads as `None`.

use std::fs;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use facegroup_core::Face;

/// Every face of one photo, and which of them is the labelled one.
pub struct Photo {
    pub faces: Vec<Embedded>,
    /// Index into `faces` of the labelled face; `None` when the photo has no face.
    pub labelled: Option<usize>,
}

impl Photo {
    pub fn new(width: u32, height: u32, found: Vec<Face>) -> Self {
        let faces: Vec<Embedded> = found
            .into_iter()
            .map(|f| Embedded {
                bbox: [f.bbox.x1, f.bbox.y1, f.bbox.x2, f.bbox.y2],
                quality_ok: f.quality.passes(),
                quality: f.quality.overall,
                embedding: f.embedding,
            })
            .collect();
        let labelled = labelled_face(width, height, &faces);
        Self { faces, labelled }
    }

    /// A photo known only by its labelled face (a format-1 cache).
    pub fn labelled_only(face: Embedded) -> Self {
        Self {
            faces: vec![face],
            labelled: Some(0),
        }
    }

    pub fn labelled(&self) -> Option<&Embedded> {
        self.faces.get(self.labelled?)
    }
}

/// The face nearest the image centre among faces at least half as tall as the tallest.
fn labelled_face(width: u32, height: u32, faces: &[Embedded]) -> Option<usize> {
    let tall = |f: &Embedded| f.bbox[3] - f.bbox[1];
    let tallest = faces.iter().map(tall).fold(0.0f32, f32::max);
    let (cx, cy) = (width as f32 / 2.0, height as f32 / 2.0);
    let centre_distance = |f: &Embedded| {
        let (x, y) = ((f.bbox[0] + f.bbox[2]) / 2.0, (f.bbox[1] + f.bbox[3]) / 2.0);
        (x - cx).powi(2) + (y - cy).powi(2)
    };
    faces
        .iter()
        .enumerate()
        .filter(|(_, f)| tall(f) >= tallest / 2.0)
        .min_by(|a, b| centre_distance(a.1).total_cmp(&centre_distance(b.1)))
        .map(|(i, _)| i)
}

/// One detected face.
#[derive(Clone)]
pub struct Embedded {
    /// x1, y1, x2, y2 in pixels (zero in a format-1 cache).
    pub bbox: [f32; 4],
    pub embedding: Vec<f32>,
    pub quality_ok: bool,
    pub quality: f32,
}

const CACHE_MAGIC: &[u8; 8] = b"FGEVAL01";
const PHOTOS_MAGIC: &[u8; 8] = b"FGEVAL02";

/// Layout: magic, key (u32 length + UTF-8), count u32, then per photo a flag byte (0: no
/// face) or 1, quality_ok u8, quality f32, dim u32, dim x f32; little-endian.
pub fn write_cache(path: &Path, key: &str, embedded: &[Option<Embedded>]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut w = BufWriter::new(fs::File::create(&tmp)?);
    w.write_all(CACHE_MAGIC)?;
    w.write_all(&(key.len() as u32).to_le_bytes())?;
    w.write_all(key.as_bytes())?;
    w.write_all(&(embedded.len() as u32).to_le_bytes())?;
    for e in embedded {
        match e {
            None => w.write_all(&[0])?,
            Some(e) => {
                w.write_all(&[1])?;
                write_face(&mut w, e, false)?;
            }
        }
    }
    w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    // Written aside and renamed so an interrupted run never leaves a truncated cache.
    fs::rename(tmp, path)
}

/// Layout: magic, key (u32 length + UTF-8), count u32, then per photo the labelled face's
/// index + 1 (u32, 0: none), the face count u32 and per face x1 y1 x2 y2 f32, quality_ok u8,
/// quality f32, dim u32, dim x f32; little-endian.
pub fn write_photos(path: &Path, key: &str, photos: &[Option<Photo>]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut w = BufWriter::new(fs::File::create(&tmp)?);
    w.write_all(PHOTOS_MAGIC)?;
    w.write_all(&(key.len() as u32).to_le_bytes())?;
    w.write_all(key.as_bytes())?;
    w.write_all(&(photos.len() as u32).to_le_bytes())?;
    for p in photos {
        let (labelled, faces) = p.as_ref().map_or((0, &[][..]), |p| {
            (p.labelled.map_or(0, |l| l + 1), &p.faces[..])
        });
        w.write_all(&(labelled as u32).to_le_bytes())?;
        w.write_all(&(faces.len() as u32).to_le_bytes())?;
        for f in faces {
            write_face(&mut w, f, true)?;
        }
    }
    w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    fs::rename(tmp, path)
}

fn write_face(w: &mut impl Write, f: &Embedded, with_box: bool) -> std::io::Result<()> {
    if with_box {
        for x in f.bbox {
            w.write_all(&x.to_le_bytes())?;
        }
    }
    w.write_all(&[f.quality_ok as u8])?;
    w.write_all(&f.quality.to_le_bytes())?;
    w.write_all(&(f.embedding.len() as u32).to_le_bytes())?;
    for x in &f.embedding {
        w.write_all(&x.to_le_bytes())?;
    }
    Ok(())
}

/// Reads the magic, key and count; `None` unless they match.
fn read_header(r: &mut impl Read, magic: &[u8; 8], key: &str, count: usize) -> Option<()> {
    let mut m = [0u8; 8];
    r.read_exact(&mut m).ok()?;
    if &m != magic {
        return None;
    }
    let key_len = read_u32(r)? as usize;
    if key_len > 1 << 16 || read_bytes(r, key_len)? != key.as_bytes() {
        return None;
    }
    (read_u32(r)? as usize == count).then_some(())
}

fn read_face(r: &mut impl Read, with_box: bool) -> Option<Embedded> {
    let mut bbox = [0.0f32; 4];
    if with_box {
        for x in &mut bbox {
            *x = read_f32(r)?;
        }
    }
    let quality_ok = read_bytes(r, 1)?[0] == 1;
    let quality = read_f32(r)?;
    let dim = read_u32(r)? as usize;
    if dim > 4096 {
        return None;
    }
    let raw = read_bytes(r, dim * 4)?;
    let embedding = raw
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Some(Embedded {
        bbox,
        quality_ok,
        quality,
        embedding,
    })
}

/// The cached labelled faces, or `None` when the file is missing, corrupt or for another key.
pub fn read_cache(path: &Path, key: &str, count: usize) -> Option<Vec<Option<Embedded>>> {
    let mut r = BufReader::new(fs::File::open(path).ok()?);
    read_header(&mut r, CACHE_MAGIC, key, count)?;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        if read_bytes(&mut r, 1)?[0] == 0 {
            out.push(None);
        } else {
            out.push(Some(read_face(&mut r, false)?));
        }
    }
    Some(out)
}

/// The cached photos with every face, or `None` when missing, corrupt or for another key.
pub fn read_photos(path: &Path, key: &str, count: usize) -> Option<Vec<Option<Photo>>> {
    let mut r = BufReader::new(fs::File::open(path).ok()?);
    read_header(&mut r, PHOTOS_MAGIC, key, count)?;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let labelled = read_u32(&mut r)? as usize;
        let n = read_u32(&mut r)? as usize;
        if n > 10_000 || labelled > n {
            return None;
        }
        let faces = (0..n)
            .map(|_| read_face(&mut r, true))
            .collect::<Option<Vec<_>>>()?;
        out.push(Some(Photo {
            faces,
            labelled: labelled.checked_sub(1),
        }));
    }
    Some(out)
}

fn read_f32(r: &mut impl Read) -> Option<f32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b).ok()?;
    Some(f32::from_le_bytes(b))
}

fn read_u32(r: &mut impl Read) -> Option<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b).ok()?;
    Some(u32::from_le_bytes(b))
}

fn read_bytes(r: &mut impl Read, n: usize) -> Option<Vec<u8>> {
    let mut b = vec![0u8; n];
    r.read_exact(&mut b).ok()?;
    Some(b)
}
