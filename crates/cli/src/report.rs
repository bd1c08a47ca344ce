//! The HTML report, sized for a photo library: `report.html` is an index of persons (each
//! with its representative face, name and face count) and links into `report/`, which holds
//! one page set per person (paginated, [`FACES_PER_PAGE`] faces a page), the unassigned faces,
//! a paginated photo list ([`PHOTOS_PER_PAGE`] a page, failed photos with their error) and one
//! page per photo showing it with its face boxes drawn over it (CSS boxes positioned in
//! percent of the photo), each box linked to its person.
//!
//! Nothing is inlined: crops and photos are referenced by relative path (photos in the photo
//! folder, as given to the run), so the index stays small (persons only) however many photos
//! there are. No script, no external URL. Pages are written from the store on every run and
//! after `facegroup forget`, the `report/` folder being replaced as a whole so pages of gone
//! persons or photos do not linger.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Component, Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use facegroup_core::group::{Groups, Person};
use facegroup_core::FaceRecord;

use crate::output::crop_path;
use crate::store::{content_hash, RunDetails, StoredImage};

/// The index page, in the output folder.
pub const INDEX_FILE: &str = "report.html";
/// The folder of every other page, in the output folder.
pub const PAGES_DIR: &str = "report";
/// Faces on one page of a person (or of the unassigned faces).
pub const FACES_PER_PAGE: usize = 200;
/// Photos on one page of the photo list.
pub const PHOTOS_PER_PAGE: usize = 100;

/// Writes `report.html` and `report/` into `out_dir` from the stored images and grouping.
pub fn write(
    out_dir: &Path,
    info: &RunDetails,
    images: &[StoredImage],
    groups: Option<&Groups>,
    names: &HashMap<String, String>,
) -> Result<()> {
    let pages = out_dir.join(PAGES_DIR);
    match std::fs::remove_dir_all(&pages) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot replace {}", pages.display())),
    }
    std::fs::create_dir_all(&pages)
        .with_context(|| format!("cannot create {}", pages.display()))?;
    let site = Site::new(out_dir, info, images, groups, names);
    let save = |name: &str, html: String| {
        let path = pages.join(name);
        std::fs::write(&path, html).with_context(|| format!("cannot write {}", path.display()))
    };
    save("style.css", STYLE.to_string())?;
    let index = out_dir.join(INDEX_FILE);
    std::fs::write(&index, site.index())
        .with_context(|| format!("cannot write {}", index.display()))?;
    for person in site.persons() {
        for (n, html) in site.person_pages(person).into_iter().enumerate() {
            save(&person_file(&person.person_id, n + 1), html)?;
        }
    }
    for (n, html) in site.unassigned_pages().into_iter().enumerate() {
        save(&unassigned_file(n + 1), html)?;
    }
    for (n, html) in site.photo_list_pages().into_iter().enumerate() {
        save(&photos_file(n + 1), html)?;
    }
    for image in images.iter().filter(|i| i.error.is_none()) {
        save(&photo_file(&image.name), site.photo_page(image))?;
    }
    Ok(())
}

/// File name (in `report/`) of page `n` (from 1) of a person.
pub fn person_file(person_id: &str, n: usize) -> String {
    format!("person-{}-{n}.html", file_key(person_id))
}

/// File name (in `report/`) of a photo's page.
pub fn photo_file(image: &str) -> String {
    format!("photo-{}.html", &content_hash(image.as_bytes())[..16])
}

fn unassigned_file(n: usize) -> String {
    format!("unassigned-{n}.html")
}

fn photos_file(n: usize) -> String {
    format!("photos-{n}.html")
}

/// Everything a page needs, indexed once.
struct Site<'a> {
    info: &'a RunDetails,
    images: &'a [StoredImage],
    groups: Option<&'a Groups>,
    names: &'a HashMap<String, String>,
    faces: HashMap<&'a str, &'a FaceRecord>,
    person_of: HashMap<&'a str, &'a str>,
    /// The photo folder as seen from `report/`.
    photos_base: String,
}

impl<'a> Site<'a> {
    fn new(
        out_dir: &Path,
        info: &'a RunDetails,
        images: &'a [StoredImage],
        groups: Option<&'a Groups>,
        names: &'a HashMap<String, String>,
    ) -> Self {
        let faces = images
            .iter()
            .flat_map(|i| &i.faces)
            .map(|f| (f.face_id.as_str(), f))
            .collect();
        let person_of = groups
            .iter()
            .flat_map(|g| &g.persons)
            .flat_map(|p| {
                p.face_ids
                    .iter()
                    .map(|f| (f.as_str(), p.person_id.as_str()))
            })
            .collect();
        let photos_base = relative_url(&out_dir.join(PAGES_DIR), Path::new(&info.photos_dir));
        Self {
            info,
            images,
            groups,
            names,
            faces,
            person_of,
            photos_base,
        }
    }

    fn persons(&self) -> &'a [Person] {
        self.groups.map_or(&[], |g| g.persons.as_slice())
    }

    fn person_title(&self, person_id: &str) -> String {
        match self.names.get(person_id) {
            Some(name) => format!("{} &middot; {}", escape(name), escape(person_id)),
            None => escape(person_id),
        }
    }

    /// `report.html`: the summary and one card per person.
    fn index(&self) -> String {
        let mut html = page_start("facegroup report", &format!("{PAGES_DIR}/style.css"));
        let failed = self.images.iter().filter(|i| i.error.is_some()).count();
        let faces = self.faces.len();
        let i = self.info;
        let _ = write!(
            html,
            "<header>\n<h1>facegroup report</h1>\n<dl>\
             <dt>Images</dt><dd><a href=\"{PAGES_DIR}/{photos}\">{} ({} ok, {} failed)</a></dd>\
             <dt>Faces</dt><dd>{}</dd>\
             <dt>Models</dt><dd>{} + {} ({})</dd>\
             <dt>Written</dt><dd>{} UTC (last run {:.1} s)</dd></dl>\n</header>\n",
            self.images.len(),
            self.images.len() - failed,
            failed,
            faces,
            escape(&i.detector),
            escape(&i.embedder),
            escape(&i.model_version),
            utc_now(),
            i.seconds,
            photos = photos_file(1),
        );
        let persons = self.persons();
        let _ = writeln!(
            html,
            "<h2 id=\"people\">People ({})</h2>\n<div class=\"people\">",
            persons.len()
        );
        for p in persons {
            let src = url_path(&crop_of(&self.faces, &p.representative));
            let _ = writeln!(
                html,
                "<a class=\"person\" href=\"{PAGES_DIR}/{href}\"><img src=\"{src}\" width=\"112\" \
                 height=\"112\" loading=\"lazy\" alt=\"{id}\"><span class=\"name\">{title}</span>\
                 <span class=\"count\">{n} face(s)</span></a>",
                href = url_path(&person_file(&p.person_id, 1)),
                id = escape(&p.person_id),
                title = self.person_title(&p.person_id),
                n = p.face_ids.len(),
            );
        }
        html.push_str("</div>\n");
        if let Some(g) = self.groups {
            let _ = writeln!(
                html,
                "<p><a href=\"{PAGES_DIR}/{}\">Unassigned faces ({})</a></p>",
                unassigned_file(1),
                g.unassigned.len()
            );
        }
        html.push_str(PAGE_END);
        html
    }

    /// A person's pages, its representative face first.
    fn person_pages(&self, person: &Person) -> Vec<String> {
        let ordered: Vec<&str> = std::iter::once(person.representative.as_str())
            .chain(
                person
                    .face_ids
                    .iter()
                    .map(String::as_str)
                    .filter(|f| *f != person.representative),
            )
            .collect();
        let title = self.person_title(&person.person_id);
        let id = person.person_id.as_str();
        self.face_pages(&title, &ordered, |n| person_file(id, n))
    }

    fn unassigned_pages(&self) -> Vec<String> {
        let Some(g) = self.groups else {
            return Vec::new();
        };
        let ids: Vec<&str> = g.unassigned.iter().map(String::as_str).collect();
        self.face_pages("Unassigned faces", &ids, unassigned_file)
    }

    /// Pages of [`FACES_PER_PAGE`] faces, each linked to its photo's page.
    fn face_pages(&self, title: &str, ids: &[&str], file: impl Fn(usize) -> String) -> Vec<String> {
        let chunks: Vec<&[&str]> = if ids.is_empty() {
            vec![&[]]
        } else {
            ids.chunks(FACES_PER_PAGE).collect()
        };
        let total = chunks.len();
        chunks
            .iter()
            .enumerate()
            .map(|(n, chunk)| {
                let mut html = page_start(title, "style.css");
                let _ = writeln!(
                    html,
                    "<p><a href=\"../{INDEX_FILE}\">&larr; People</a></p>\n<h1>{title}</h1>\n\
                     <p class=\"meta\">{} face(s)</p>",
                    ids.len()
                );
                pager(&mut html, n + 1, total, &file);
                html.push_str("<div class=\"faces\">\n");
                for id in *chunk {
                    if let Some(face) = self.faces.get(id) {
                        render_face(&mut html, face, "../", &photo_file(&face.image_id));
                    }
                }
                html.push_str("</div>\n");
                pager(&mut html, n + 1, total, &file);
                html.push_str(PAGE_END);
                html
            })
            .collect()
    }

    /// Pages of [`PHOTOS_PER_PAGE`] photos: name (linked to the photo's page), size, faces; a
    /// failed photo with its error.
    fn photo_list_pages(&self) -> Vec<String> {
        let chunks: Vec<&[StoredImage]> = if self.images.is_empty() {
            vec![&[]]
        } else {
            self.images.chunks(PHOTOS_PER_PAGE).collect()
        };
        let total = chunks.len();
        chunks
            .iter()
            .enumerate()
            .map(|(n, chunk)| {
                let mut html = page_start("Photos", "style.css");
                let _ = writeln!(
                    html,
                    "<p><a href=\"../{INDEX_FILE}\">&larr; People</a></p>\n<h1>Photos ({})</h1>",
                    self.images.len()
                );
                pager(&mut html, n + 1, total, photos_file);
                html.push_str("<ul class=\"photos\">\n");
                for image in *chunk {
                    match (&image.error, image.width, image.height) {
                        (None, Some(w), Some(h)) => {
                            let _ = writeln!(
                                html,
                                "<li><a href=\"{}\">{}</a> <span class=\"meta\">{w}&times;{h} px, \
                                 {} face(s)</span></li>",
                                url_path(&photo_file(&image.name)),
                                escape(&image.name),
                                image.faces.len()
                            );
                        }
                        (error, _, _) => {
                            let _ = writeln!(
                                html,
                                "<li class=\"failed\"><b>{}</b>: {}</li>",
                                escape(&image.name),
                                escape(error.as_deref().unwrap_or("no size"))
                            );
                        }
                    }
                }
                html.push_str("</ul>\n");
                pager(&mut html, n + 1, total, photos_file);
                html.push_str(PAGE_END);
                html
            })
            .collect()
    }

    /// One photo with its face boxes over it, each linked to its person's page.
    fn photo_page(&self, image: &StoredImage) -> String {
        let (w, h) = (
            image.width.unwrap_or(1).max(1) as f32,
            image.height.unwrap_or(1).max(1) as f32,
        );
        let mut html = page_start(&escape(&image.name), "style.css");
        let _ = writeln!(
            html,
            "<p><a href=\"../{INDEX_FILE}\">&larr; People</a> &middot; <a href=\"{}\">Photos</a></p>\n\
             <h1>{}</h1>\n<p class=\"meta\">{}&times;{} px, {} face(s)</p>\n\
             <div class=\"photo\"><img src=\"{}\" alt=\"{}\">",
            photos_file(1),
            escape(&image.name),
            w,
            h,
            image.faces.len(),
            escape(&format!("{}{}", self.photos_base, url_path(&image.name))),
            escape(&image.name),
        );
        for face in &image.faces {
            let [x1, y1, x2, y2] = face.bbox;
            let style = format!(
                "left:{:.2}%;top:{:.2}%;width:{:.2}%;height:{:.2}%",
                100.0 * x1 / w,
                100.0 * y1 / h,
                100.0 * (x2 - x1) / w,
                100.0 * (y2 - y1) / h
            );
            match self.person_of.get(face.face_id.as_str()) {
                Some(person) => {
                    let _ = write!(
                        html,
                        "<a class=\"box\" id=\"face-{}\" href=\"{}\" style=\"{style}\" \
                         data-person=\"{}\"><span>{}</span></a>",
                        face.index,
                        url_path(&person_file(person, 1)),
                        escape(person),
                        self.person_title(person)
                    );
                }
                None => {
                    let _ = write!(
                        html,
                        "<span class=\"box unassigned\" id=\"face-{}\" style=\"{style}\"></span>",
                        face.index
                    );
                }
            }
        }
        html.push_str("</div>\n<div class=\"faces\">\n");
        for face in &image.faces {
            let link = self
                .person_of
                .get(face.face_id.as_str())
                .map_or_else(|| unassigned_file(1), |p| person_file(p, 1));
            render_face(&mut html, face, "../", &link);
        }
        html.push_str("</div>\n");
        html.push_str(PAGE_END);
        html
    }
}

// `write!` into a `String` cannot fail, so its results are ignored throughout.

/// One face: its crop, linked to `link` (a page in `report/`), with score and quality; the
/// quality reasons of a face that fails wrap inside the card.
fn render_face(html: &mut String, face: &FaceRecord, prefix: &str, link: &str) {
    let q = &face.quality;
    let (class, verdict) = if q.passes() {
        ("face", "good".to_string())
    } else {
        let reasons: Vec<String> = q.reasons.iter().map(|r| format!("{r:?}")).collect();
        ("face bad", reasons.join(", "))
    };
    let _ = writeln!(
        html,
        "<figure class=\"{class}\" id=\"{id}\"><a href=\"{link}\"><img src=\"{prefix}{src}\" width=\"112\" \
         height=\"112\" loading=\"lazy\" alt=\"{id}\"></a>\
         <figcaption>score {:.2}<br>sharpness {:.0}<br>brightness {:.0}<br>yaw {:.0}&deg; pitch {:.0}&deg;<br>\
         <span class=\"verdict\">{}</span></figcaption></figure>",
        face.score,
        q.sharpness,
        q.brightness,
        q.yaw,
        q.pitch,
        escape(&verdict),
        id = escape(&face.face_id),
        link = url_path(link),
        src = escape(&url_path(&crop_path(&face.image_id, face.index as usize))),
    );
}

fn crop_of(faces: &HashMap<&str, &FaceRecord>, face_id: &str) -> String {
    faces
        .get(face_id)
        .map_or_else(String::new, |f| crop_path(&f.image_id, f.index as usize))
}

/// "Page n of total" with links to every page, when there is more than one.
fn pager(html: &mut String, n: usize, total: usize, file: impl Fn(usize) -> String) {
    if total <= 1 {
        return;
    }
    let _ = write!(html, "<nav class=\"pager\">Page {n} of {total}:");
    for k in 1..=total {
        if k == n {
            let _ = write!(html, " <b>{k}</b>");
        } else {
            let _ = write!(html, " <a href=\"{}\">{k}</a>", url_path(&file(k)));
        }
    }
    html.push_str("</nav>\n");
}

fn page_start(title: &str, css: &str) -> String {
    let mut html = String::with_capacity(8 * 1024);
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>{title}</title>\n<link rel=\"stylesheet\" href=\"{css}\">\n</head>\n<body>\n"
    );
    html
}

const PAGE_END: &str = "</body>\n</html>\n";

const STYLE: &str = r#"body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
header dl { display: grid; grid-template-columns: max-content auto; gap: .2em 1em; }
header dt { font-weight: bold; }
h1 { font-size: 1.3em; overflow-wrap: anywhere; }
.meta { color: #666; margin: .2em 0 .5em; }
.people, .faces { display: flex; flex-wrap: wrap; gap: .6em; }
a.person { display: flex; flex-direction: column; width: 120px; padding: 3px; border: 1px solid #ccc;
           border-radius: 4px; font-size: 12px; color: inherit; text-decoration: none; }
a.person img { width: 112px; height: 112px; }
a.person .name { font-weight: bold; overflow-wrap: anywhere; }
figure { margin: 0; width: 120px; padding: 3px; border: 3px solid #4a4; border-radius: 4px;
         font-size: 12px; }
figure img { display: block; width: 112px; height: 112px; }
figcaption { overflow-wrap: anywhere; }
figure.bad { border-color: #d33; background: #fee; }
figure.bad .verdict { color: #b00; font-weight: bold; }
.pager { margin: .6em 0; }
ul.photos li { margin: .2em 0; overflow-wrap: anywhere; }
li.failed { color: #b00; }
.photo { position: relative; display: inline-block; max-width: 100%; }
.photo img { display: block; max-width: 100%; max-height: 85vh; width: auto; height: auto; }
.box { position: absolute; border: 2px solid #fd0; box-sizing: border-box; }
.box span { position: absolute; top: 100%; left: 0; background: #fd0; color: #000; font-size: 11px;
            padding: 0 2px; white-space: nowrap; }
.box.unassigned { border-color: #aaa; }
"#;

/// Key of a person id safe in a file name: the id itself when it is plain
/// (`person-12`), otherwise a hash of it.
fn file_key(id: &str) -> String {
    if !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        id.to_string()
    } else {
        content_hash(id.as_bytes())[..16].to_string()
    }
}

/// URL of folder `to` as seen from folder `from`, ending in `/`: relative when both resolve
/// on this machine (the report can move with the photos), else the absolute path.
fn relative_url(from: &Path, to: &Path) -> String {
    let (Ok(from), Ok(to)) = (std::fs::canonicalize(from), std::fs::canonicalize(to)) else {
        return format!("{}/", url_path(&to.display().to_string()));
    };
    let a: Vec<Component> = from.components().collect();
    let b: Vec<Component> = to.components().collect();
    let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut rel = PathBuf::new();
    for _ in common..a.len() {
        rel.push("..");
    }
    for c in &b[common..] {
        rel.push(c);
    }
    let mut url = url_path(&rel.to_string_lossy());
    if !url.is_empty() {
        url.push('/');
    }
    url
}

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
