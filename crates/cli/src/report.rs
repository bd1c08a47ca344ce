//! `report.html`: one self-contained page (inline CSS, no script, no external URL) showing the
//! run summary, every image with its face crops and quality, and the images that failed.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use std::collections::HashMap;

use facegroup_core::group::Groups;
use facegroup_core::FaceRecord;

use crate::output::crop_path;
use crate::store::{RunDetails, StoredImage};

/// Writes `report.html` into `out_dir` from the stored images and grouping.
pub fn write(
    out_dir: &Path,
    info: &RunDetails,
    images: &[StoredImage],
    groups: Option<&Groups>,
    names: &HashMap<String, String>,
) -> Result<()> {
    let path = out_dir.join("report.html");
    std::fs::write(&path, render(info, images, groups, names))
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The whole page.
pub fn render(
    info: &RunDetails,
    images: &[StoredImage],
    groups: Option<&Groups>,
    names: &HashMap<String, String>,
) -> String {
    let mut html = String::with_capacity(16 * 1024);
    html.push_str(HEAD);
    render_summary(&mut html, info, images);
    render_groups(&mut html, groups, images, names);
    render_images(&mut html, images);
    render_failures(&mut html, images);
    html.push_str("</body>\n</html>\n");
    html
}

/// One row of face crops per person, largest first, its representative face first; faces no
/// person claimed come last.
fn render_groups(
    html: &mut String,
    groups: Option<&Groups>,
    images: &[StoredImage],
    names: &HashMap<String, String>,
) {
    let Some(groups) = groups else { return };
    let faces: HashMap<&str, &FaceRecord> = images
        .iter()
        .flat_map(|i| &i.faces)
        .map(|f| (f.face_id.as_str(), f))
        .collect();
    let _ = writeln!(
        html,
        "<h2 id=\"people\">People ({})</h2>",
        groups.persons.len()
    );
    for person in &groups.persons {
        let _ = write!(
            html,
            "<section class=\"person\">\n<h3>{}{} <span class=\"meta\">{} face(s)</span></h3>\n<div class=\"faces\">\n",
            names
                .get(&person.person_id)
                .map_or_else(String::new, |n| format!("{} &middot; ", escape(n))),
            escape(&person.person_id),
            person.face_ids.len()
        );
        let ordered = std::iter::once(&person.representative).chain(
            person
                .face_ids
                .iter()
                .filter(|f| **f != person.representative),
        );
        for id in ordered {
            if let Some(face) = faces.get(id.as_str()) {
                render_face(html, face);
            }
        }
        html.push_str("</div>\n</section>\n");
    }
    let _ = write!(
        html,
        "<section class=\"person\">\n<h3>Unassigned <span class=\"meta\">{} face(s)</span></h3>\n<div class=\"faces\">\n",
        groups.unassigned.len()
    );
    for id in &groups.unassigned {
        if let Some(face) = faces.get(id.as_str()) {
            render_face(html, face);
        }
    }
    html.push_str("</div>\n</section>\n");
}

// `write!` into a `String` cannot fail, so its results are ignored throughout.

fn render_summary(html: &mut String, info: &RunDetails, images: &[StoredImage]) {
    let failed = images.iter().filter(|i| i.error.is_some()).count();
    let faces: usize = images.iter().map(|i| i.faces.len()).sum();
    let _ = write!(
        html,
        "<header>\n<h1>facegroup report</h1>\n<dl>\
         <dt>Images</dt><dd>{} ({} ok, {} failed)</dd>\
         <dt>Faces</dt><dd>{}</dd>\
         <dt>Models</dt><dd>{} + {} ({})</dd>\
         <dt>Run</dt><dd>{} UTC, {:.1} s</dd></dl>\n</header>\n",
        images.len(),
        images.len() - failed,
        failed,
        faces,
        escape(&info.detector),
        escape(&info.embedder),
        escape(&info.model_version),
        utc_now(),
        info.seconds,
    );
}

fn render_images(html: &mut String, images: &[StoredImage]) {
    html.push_str("<h2>Images</h2>\n");
    for image in images {
        let (Some(width), Some(height), None) = (image.width, image.height, &image.error) else {
            continue;
        };
        let _ = write!(
            html,
            "<section>\n<h3>{}</h3>\n<p class=\"meta\">{}&times;{} px, {} face(s)</p>\n<div class=\"faces\">\n",
            escape(&image.name),
            width,
            height,
            image.faces.len(),
        );
        for face in &image.faces {
            render_face(html, face);
        }
        html.push_str("</div>\n</section>\n");
    }
}

fn render_face(html: &mut String, face: &FaceRecord) {
    let q = &face.quality;
    let (class, verdict) = if q.passes() {
        ("face", "good".to_string())
    } else {
        let reasons: Vec<String> = q.reasons.iter().map(|r| format!("{r:?}")).collect();
        ("face bad", reasons.join(", "))
    };
    let _ = writeln!(
        html,
        "<figure class=\"{class}\" id=\"{id}\"><img src=\"{src}\" width=\"112\" height=\"112\" alt=\"{id}\">\
         <figcaption>score {:.2}<br>sharpness {:.0}<br>brightness {:.0}<br>yaw {:.0}&deg; pitch {:.0}&deg;<br>\
         <span class=\"verdict\">{}</span></figcaption></figure>",
        face.score,
        q.sharpness,
        q.brightness,
        q.yaw,
        q.pitch,
        escape(&verdict),
        id = escape(&face.face_id),
        src = escape(&url_path(&crop_path(&face.image_id, face.index as usize))),
    );
}

fn render_failures(html: &mut String, images: &[StoredImage]) {
    let failures: Vec<(&String, &String)> = images
        .iter()
        .filter_map(|i| i.error.as_ref().map(|e| (&i.name, e)))
        .collect();
    let _ = writeln!(
        html,
        "<h2 id=\"failed\">Failed images ({})</h2>",
        failures.len()
    );
    if failures.is_empty() {
        html.push_str("<p>None.</p>\n");
        return;
    }
    html.push_str("<ul class=\"failed\">\n");
    for (name, error) in failures {
        let _ = writeln!(html, "<li><b>{}</b>: {}</li>", escape(name), escape(error));
    }
    html.push_str("</ul>\n");
}

const HEAD: &str = r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>facegroup report</title>
<style>
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
header dl { display: grid; grid-template-columns: max-content auto; gap: .2em 1em; }
header dt { font-weight: bold; }
section { border-top: 1px solid #ddd; padding: .5em 0; }
h3 { margin: .2em 0; font-size: 1em; word-break: break-all; }
.meta { color: #666; margin: .2em 0 .5em; }
.faces { display: flex; flex-wrap: wrap; gap: .6em; }
figure { margin: 0; width: 120px; padding: 3px; border: 3px solid #4a4; border-radius: 4px;
         font-size: 12px; }
figure img { display: block; width: 112px; height: 112px; }
figure.bad { border-color: #d33; background: #fee; }
figure.bad .verdict { color: #b00; font-weight: bold; }
ul.failed li { margin: .2em 0; word-break: break-all; }
</style>
</head>
<body>
"#;

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// Percent-encodes a relative path for a URL, keeping `/`: file names may hold spaces, `#`,
/// `?` or `%`, which a browser would otherwise read as URL syntax.
fn url_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"/-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// `YYYY-MM-DD HH:MM` in UTC, without a date library.
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape(r#"<a href="x">&'"#),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn url_path_keeps_slashes_and_encodes_the_rest() {
        assert_eq!(
            url_path("crops/a b#1.jpg.0.jpg"),
            "crops/a%20b%231.jpg.0.jpg"
        );
        assert_eq!(url_path("crops/é.jpg"), "crops/%C3%A9.jpg");
    }

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }
}
