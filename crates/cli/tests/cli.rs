//! End-to-end tests of the `facegroup` binary on real photos and models (fetched by
//! `scripts/setup.sh`).

use std::path::Path;
use std::process::{Command, Output};

use facegroup_testkit::{image_bytes, ort_dylib, repo_root, TempDir};

#[test]
fn run_writes_faces_images_crops_and_report() {
    let photos = TempDir::new("photos");
    copy_test_image("obama.jpg", photos.path());
    copy_test_image("t1.jpg", photos.path());
    // A JPEG cut in half: must be reported as failed, not stop the run.
    let jpeg = image_bytes("obama.jpg");
    write(&photos.path().join("bad.jpg"), &jpeg[..jpeg.len() / 2]);
    write(&photos.path().join("notes.txt"), b"not a photo");
    let out = TempDir::new("out");

    let output = facegroup(&[
        "run",
        path_str(photos.path()),
        "--out",
        path_str(out.path()),
    ])
    .arg("--threads")
    .arg("2")
    .output()
    .expect("start facegroup");
    assert_success(&output);

    let faces = read_jsonl(&out.path().join("faces.jsonl"));
    assert_eq!(faces.len(), 7, "faces: {faces:?}");
    for face in &faces {
        let emb: Vec<f64> = face["embedding"]
            .as_array()
            .expect("embedding array")
            .iter()
            .map(|v| v.as_f64().expect("embedding number"))
            .collect();
        assert_eq!(emb.len(), 512);
        let norm = emb.iter().map(|v| v * v).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-3, "norm {norm}");
        let crop = face["crop"].as_str().expect("crop path");
        assert!(out.path().join(crop).is_file(), "missing crop {crop}");
        assert_eq!(face["bbox"].as_array().map(Vec::len), Some(4));
        assert_eq!(face["landmarks"].as_array().map(Vec::len), Some(5));
        assert!(face["quality"]["sharpness"].is_number());
    }
    let ids: Vec<&str> = faces.iter().filter_map(|f| f["face_id"].as_str()).collect();
    assert_eq!(ids[0], "obama.jpg:scrfd_500m_bnkps+w600k_mbf:0");
    assert!(
        ids[1..].iter().all(|id| id.starts_with("t1.jpg:")),
        "{ids:?}"
    );

    let images = read_jsonl(&out.path().join("images.jsonl"));
    let names: Vec<&str> = images.iter().filter_map(|i| i["image"].as_str()).collect();
    assert_eq!(names, ["bad.jpg", "obama.jpg", "t1.jpg"]);
    assert_eq!(images[0]["status"], "failed");
    assert!(images[0]["error"].as_str().is_some_and(|e| !e.is_empty()));
    assert_eq!(images[1]["status"], "ok");
    assert_eq!(images[1]["faces"], 1);

    // Seven different people (t1.jpg's six can never merge): no person, all unassigned.
    let report = std::fs::read_to_string(out.path().join("report.html")).expect("report.html");
    assert!(report.contains("People (0)"), "{report}");
    assert!(report.contains("Unassigned faces (7)"), "{report}");
    assert!(!report.contains("http://") && !report.contains("https://"));
    let page = |name: &str| {
        std::fs::read_to_string(out.path().join("report").join(name))
            .unwrap_or_else(|e| panic!("report/{name}: {e}"))
    };
    assert_eq!(
        page("unassigned-1.html")
            .matches("<img src=\"../crops/")
            .count(),
        7
    );
    let list = page("photos-1.html");
    assert!(
        list.contains("<li class=\"failed\"><b>bad.jpg</b>"),
        "{list}"
    );
    assert_eq!(list.matches("<a href=\"photo-").count(), 2, "{list}");

    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("2 images ok, 1 failed, 7 faces"),
        "{stdout}"
    );
}

/// The walker picks up `.heic`/`.avif` photos (made from the sample JPEGs by heif-enc) and
/// the run analyses them like JPEGs.
#[test]
fn run_analyses_heic_and_avif_photos() {
    let photos = TempDir::new("heif-photos");
    facegroup_testkit::heif_enc(
        &image_bytes("obama.jpg"),
        &photos.path().join("obama.heic"),
        &[],
    );
    facegroup_testkit::heif_enc(
        &image_bytes("biden.jpg"),
        &photos.path().join("biden.AVIF"),
        &["-A"],
    );
    let out = TempDir::new("heif-out");
    run_ok(photos.path(), out.path(), &[]);
    let images = read_jsonl(&out.path().join("images.jsonl"));
    let names: Vec<&str> = images.iter().filter_map(|i| i["image"].as_str()).collect();
    assert_eq!(names, ["biden.AVIF", "obama.heic"]);
    for image in &images {
        assert_eq!(image["status"], "ok", "{image}");
        assert_eq!(image["faces"], 1, "{image}");
    }
}

#[test]
fn run_groups_persons_and_keeps_their_ids_when_photos_are_added() {
    let photos = TempDir::new("group-photos");
    for name in ["obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg"] {
        copy_test_image(name, photos.path());
    }
    let out = TempDir::new("group-out");
    let run = || {
        let output = facegroup(&[
            "run",
            path_str(photos.path()),
            "--out",
            path_str(out.path()),
        ])
        .output()
        .expect("start facegroup");
        assert_success(&output);
        let text = std::fs::read_to_string(out.path().join("groups.json")).expect("groups.json");
        serde_json::from_str::<serde_json::Value>(&text).expect("groups.json is JSON")
    };

    let first = run();
    let persons = first["persons"].as_array().expect("persons");
    assert_eq!(persons.len(), 1, "{first}");
    let obama = &persons[0];
    let faces: Vec<&str> = obama["face_ids"]
        .as_array()
        .expect("face_ids")
        .iter()
        .filter_map(|f| f.as_str())
        .collect();
    assert_eq!(
        faces,
        [
            "obama.jpg:scrfd_500m_bnkps+w600k_mbf:0",
            "obama2.jpg:scrfd_500m_bnkps+w600k_mbf:0",
            "obama3.jpg:scrfd_500m_bnkps+w600k_mbf:0"
        ]
    );
    assert!(faces.contains(&obama["representative"].as_str().expect("representative")));
    assert_eq!(
        first["unassigned"],
        serde_json::json!(["biden.jpg:scrfd_500m_bnkps+w600k_mbf:0"])
    );
    let obama_id = obama["person_id"].as_str().expect("person_id").to_string();
    let records = read_jsonl(&out.path().join("faces.jsonl"));
    for r in &records {
        let expected = (r["image_id"] != "biden.jpg").then_some(obama_id.as_str());
        assert_eq!(r["person_id"].as_str(), expected, "{r}");
    }
    let report = std::fs::read_to_string(out.path().join("report.html")).expect("report.html");
    assert!(report.contains("People (1)"));

    // One more photo arrives: the person keeps its id, the new faces stay apart.
    copy_test_image("t1.jpg", photos.path());
    let second = run();
    let persons = second["persons"].as_array().expect("persons");
    assert_eq!(persons.len(), 1, "{second}");
    assert_eq!(persons[0]["person_id"].as_str(), Some(obama_id.as_str()));
    assert_eq!(persons[0]["face_ids"].as_array().map(Vec::len), Some(3));
    assert_eq!(second["unassigned"].as_array().map(Vec::len), Some(7));
}

#[test]
fn rerun_analyses_only_new_and_changed_photos_and_forgets_removed_ones() {
    let photos = TempDir::new("inc-photos");
    for name in ["obama.jpg", "obama2.jpg", "biden.jpg"] {
        copy_test_image(name, photos.path());
    }
    let out = TempDir::new("inc-out");
    let run = || run_ok(photos.path(), out.path(), &[]);

    assert!(run().contains("3 analysed, 0 unchanged, 0 removed; 3 images ok"));
    let first = std::fs::read_to_string(out.path().join("faces.jsonl")).expect("faces.jsonl");
    assert!(out.path().join("facegroup.db").is_file());

    // Unchanged folder: nothing analysed, same export.
    assert!(run().contains("0 analysed, 3 unchanged, 0 removed"));
    assert_eq!(
        std::fs::read_to_string(out.path().join("faces.jsonl")).ok(),
        Some(first.clone())
    );

    // Same bytes written again (new mtime): the content hash says unchanged.
    copy_test_image("biden.jpg", photos.path());
    assert!(run().contains("0 analysed, 3 unchanged, 0 removed"));

    // One new photo: analysed alone.
    copy_test_image("obama3.jpg", photos.path());
    let stdout = run();
    assert!(
        stdout.contains("1 analysed, 3 unchanged, 0 removed; 4 images ok"),
        "{stdout}"
    );

    // A photo replaced by another: re-analysed.
    write(&photos.path().join("biden.jpg"), &image_bytes("t1.jpg"));
    let stdout = run();
    assert!(
        stdout.contains("1 analysed, 3 unchanged, 0 removed"),
        "{stdout}"
    );
    let faces = read_jsonl(&out.path().join("faces.jsonl"));
    let biden = faces
        .iter()
        .filter(|f| f["image_id"] == "biden.jpg")
        .count();
    assert_eq!(biden, 6, "t1.jpg's six faces now stand under biden.jpg");

    // A removed photo is forgotten with its faces and crops.
    std::fs::remove_file(photos.path().join("obama2.jpg")).expect("remove photo");
    let stdout = run();
    assert!(
        stdout.contains("0 analysed, 3 unchanged, 1 removed; 3 images ok"),
        "{stdout}"
    );
    let faces = read_jsonl(&out.path().join("faces.jsonl"));
    assert!(faces.iter().all(|f| f["image_id"] != "obama2.jpg"));
    assert!(!out.path().join("crops/obama2.jpg.0.jpg").exists());
    let images = read_jsonl(&out.path().join("images.jsonl"));
    assert_eq!(images.len(), 3);
}

#[test]
fn a_run_killed_between_batches_resumes_to_the_uninterrupted_result() {
    let photos = TempDir::new("kill-photos");
    for name in [
        "obama.jpg",
        "obama2.jpg",
        "obama3.jpg",
        "biden.jpg",
        "t1.jpg",
    ] {
        copy_test_image(name, photos.path());
    }
    let whole = TempDir::new("kill-whole");
    run_ok(photos.path(), whole.path(), &["--batch-size", "1"]);

    let killed = TempDir::new("kill-resumed");
    // SIGKILL after 1 committed batch, then after 2 more, then finish.
    kill_after_batches(photos.path(), killed.path(), 1);
    kill_after_batches(photos.path(), killed.path(), 2);
    let stdout = run_ok(photos.path(), killed.path(), &["--batch-size", "1"]);
    assert!(
        stdout.contains("2 analysed, 3 unchanged, 0 removed"),
        "{stdout}"
    );

    for file in ["faces.jsonl", "images.jsonl", "groups.json"] {
        let a = std::fs::read_to_string(whole.path().join(file)).expect("export");
        let b = std::fs::read_to_string(killed.path().join(file)).expect("export");
        assert_eq!(a, b, "{file} differs after resuming");
    }
    let groups: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(killed.path().join("groups.json")).expect("groups"),
    )
    .expect("groups.json is JSON");
    assert_eq!(groups["persons"].as_array().map(Vec::len), Some(1));
}

#[test]
fn export_writes_the_files_shapes_from_the_store() {
    let photos = TempDir::new("export-photos");
    for name in ["obama.jpg", "obama2.jpg", "obama3.jpg"] {
        copy_test_image(name, photos.path());
    }
    let out = TempDir::new("export-out");
    run_ok(photos.path(), out.path(), &["--no-export"]);
    assert!(!out.path().join("faces.jsonl").exists());

    let export = |format: &str| {
        let output = Command::new(env!("CARGO_BIN_EXE_facegroup"))
            .args(["export", "--out", path_str(out.path()), "--format", format])
            .output()
            .expect("start facegroup");
        assert_success(&output);
        String::from_utf8(output.stdout).expect("UTF-8")
    };
    let faces: Vec<serde_json::Value> = export("jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(faces.len(), 3);
    assert_eq!(
        faces[0]["face_id"],
        "obama.jpg:scrfd_500m_bnkps+w600k_mbf:0"
    );
    assert_eq!(faces[0]["embedding"].as_array().map(Vec::len), Some(512));
    let person = faces[0]["person_id"].as_str().expect("grouped");
    assert!(faces.iter().all(|f| f["person_id"] == person));
    let groups: serde_json::Value = serde_json::from_str(&export("json")).expect("JSON");
    assert_eq!(groups["persons"][0]["person_id"], person);
    assert_eq!(
        groups["persons"][0]["face_ids"].as_array().map(Vec::len),
        Some(3)
    );
}

#[test]
fn export_by_person_writes_a_folder_of_links_per_person() {
    let (photos, out) = library(
        "byp",
        &["obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg"],
    );
    let groups = read_groups(out.path());
    let person = groups["persons"][0]["person_id"]
        .as_str()
        .expect("one person");
    on_store(out.path(), &["person", "name", person, "Barack/Obama"]);

    let dir = out.path().join("by-person");
    let listing = |d: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap_or_else(|e| panic!("{}: {e}", d.display()))
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.'))
            .collect();
        v.sort();
        v
    };
    for _ in 0..2 {
        // The second export replaces the first.
        on_store(out.path(), &["export", "--by-person", path_str(&dir)]);
        assert_eq!(listing(&dir), ["Barack_Obama"]);
        let folder = dir.join("Barack_Obama");
        assert_eq!(listing(&folder), ["obama.jpg", "obama2.jpg", "obama3.jpg"]);
        let link = std::fs::read_link(folder.join("obama2.jpg")).expect("a symbolic link");
        assert_eq!(
            std::fs::canonicalize(link).ok(),
            std::fs::canonicalize(photos.path().join("obama2.jpg")).ok()
        );
    }

    let copies = out.path().join("copies");
    on_store(
        out.path(),
        &["export", "--by-person", path_str(&copies), "--copy"],
    );
    let copy = copies.join("Barack_Obama/obama.jpg");
    assert!(!copy.is_symlink());
    assert_eq!(std::fs::read(&copy).ok(), Some(image_bytes("obama.jpg")));
    // A folder of other files is not overwritten.
    let output = Command::new(env!("CARGO_BIN_EXE_facegroup"))
        .args(["export", "--by-person", path_str(photos.path())])
        .args(["--out", path_str(out.path())])
        .output()
        .expect("start facegroup");
    assert!(!output.status.success());
    assert_eq!(listing(photos.path()).len(), 4);
}

#[test]
fn corrections_are_stored_and_honoured_by_later_runs() {
    let photos = TempDir::new("fix-photos");
    for name in ["obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg"] {
        copy_test_image(name, photos.path());
    }
    let out = TempDir::new("fix-out");
    run_ok(photos.path(), out.path(), &[]);
    let groups = || -> serde_json::Value {
        let text = std::fs::read_to_string(out.path().join("groups.json")).expect("groups.json");
        serde_json::from_str(&text).expect("JSON")
    };
    let person = groups()["persons"][0]["person_id"]
        .as_str()
        .expect("one person")
        .to_string();
    let fix = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_facegroup"))
            .args(args)
            .args(["--out", path_str(out.path())])
            .output()
            .expect("start facegroup");
        assert_success(&output);
    };
    let biden = "biden.jpg:scrfd_500m_bnkps+w600k_mbf:0";
    let obama3 = "obama3.jpg:scrfd_500m_bnkps+w600k_mbf:0";
    fix(&["face", "move", biden, "--to", &person]);
    fix(&["face", "not", obama3, "--person", &person]);
    fix(&["person", "name", &person, "Barack"]);

    // A full regroup puts the faces back as the clustering sees them; the corrections win.
    let stdout = run_ok(photos.path(), out.path(), &["--group-mode", "full"]);
    assert!(stdout.contains("1 persons"), "{stdout}");
    let g = groups();
    let faces: Vec<&str> = g["persons"][0]["face_ids"]
        .as_array()
        .expect("face_ids")
        .iter()
        .filter_map(|f| f.as_str())
        .collect();
    assert_eq!(g["persons"][0]["person_id"], person.as_str());
    assert!(
        faces.contains(&biden) && !faces.contains(&obama3),
        "{faces:?}"
    );
    assert_eq!(g["unassigned"], serde_json::json!([obama3]));
    let report = std::fs::read_to_string(out.path().join("report.html")).expect("report");
    assert!(
        report.contains("Barack &middot; "),
        "name shown in the report"
    );

    // Facts from OUT/corrections.json join the stored ones: obama2 is not the person either.
    let obama2 = "obama2.jpg:scrfd_500m_bnkps+w600k_mbf:0";
    std::fs::write(
        out.path().join("corrections.json"),
        serde_json::json!({"persons": {&person: {"not_faces": [obama2]}}}).to_string(),
    )
    .expect("write corrections.json");
    run_ok(photos.path(), out.path(), &["--group-mode", "full"]);
    let g = groups();
    let faces = g["persons"][0]["face_ids"].to_string();
    assert!(!faces.contains(obama2) && faces.contains(biden), "{g}");
    assert_eq!(g["persons"][0]["name"], "Barack");

    // Unknown persons are refused, not recorded.
    let output = Command::new(env!("CARGO_BIN_EXE_facegroup"))
        .args([
            "person",
            "merge",
            &person,
            "person-99",
            "--out",
            path_str(out.path()),
        ])
        .output()
        .expect("start facegroup");
    assert!(!output.status.success());
}

#[test]
fn forget_removes_a_photo_and_a_person_everywhere_and_runs_do_not_bring_them_back() {
    let (photos, out) = library(
        "forget",
        &["obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg"],
    );
    let db = out.path().join("facegroup.db");
    let count = |sql: &str| -> i64 {
        let conn = rusqlite::Connection::open(&db).expect("open store");
        conn.query_row(sql, [], |r| r.get(0)).expect(sql)
    };
    let forget = |target: &str| on_store(out.path(), &["forget", target]);
    let biden_traces = || {
        count("SELECT count(*) FROM images WHERE path = 'biden.jpg'")
            + count("SELECT count(*) FROM faces WHERE image_path = 'biden.jpg'")
            + count("SELECT count(*) FROM person_faces WHERE face_id LIKE 'biden.jpg:%'")
    };
    assert_eq!(biden_traces(), 2, "stored before: one image, one face");

    // A photo, named by the file itself: gone from the tables, the crops, exports and report.
    let stdout = forget(path_str(&photos.path().join("biden.jpg")));
    assert!(
        stdout.contains("forgot photo biden.jpg: 1 face"),
        "{stdout}"
    );
    assert_eq!(biden_traces(), 0);
    assert_eq!(count("SELECT count(*) FROM forgotten_images"), 1);
    assert!(!out.path().join("crops/biden.jpg.0.jpg").exists());
    for file in [
        "faces.jsonl",
        "images.jsonl",
        "groups.json",
        "report/photos-1.html",
    ] {
        let text = std::fs::read_to_string(out.path().join(file)).expect("export");
        assert!(!text.contains("biden.jpg"), "{file} still names biden.jpg");
    }
    // Re-runs skip it, also after its mtime changed; forgetting it again changes nothing.
    let stdout = run_ok(photos.path(), out.path(), &[]);
    assert!(
        stdout.contains("0 analysed, 3 unchanged") && stdout.contains("1 forgotten photos skipped"),
        "{stdout}"
    );
    copy_test_image("biden.jpg", photos.path());
    let stdout = run_ok(photos.path(), out.path(), &["--group-mode", "full"]);
    assert!(stdout.contains("0 analysed, 3 unchanged"), "{stdout}");
    assert_eq!(biden_traces(), 0);
    let before = dump(&db);
    assert!(forget("biden.jpg").contains("already forgotten"));
    assert_eq!(dump(&db), before);

    // A person, with its name: faces, crops, name and corrections go; its photos stay known.
    let groups = read_groups(out.path());
    let person = groups["persons"][0]["person_id"]
        .as_str()
        .expect("one person")
        .to_string();
    let fix = Command::new(env!("CARGO_BIN_EXE_facegroup"))
        .args([
            "person",
            "name",
            &person,
            "Barack",
            "--out",
            path_str(out.path()),
        ])
        .output()
        .expect("start facegroup");
    assert_success(&fix);
    let stdout = forget(&person);
    assert!(stdout.contains("3 face(s)"), "{stdout}");
    for table in [
        "faces",
        "persons",
        "person_faces",
        "person_names",
        "person_facts",
    ] {
        assert_eq!(
            count(&format!("SELECT count(*) FROM {table}")),
            0,
            "{table}"
        );
    }
    assert_eq!(count("SELECT count(*) FROM images"), 3);
    assert_eq!(count("SELECT count(*) FROM forgotten_faces"), 3);
    let crops: Vec<_> = std::fs::read_dir(out.path().join("crops"))
        .expect("crops folder")
        .collect();
    assert!(crops.is_empty(), "crops left: {crops:?}");
    let report = std::fs::read_to_string(out.path().join("report.html")).expect("report");
    assert!(!report.contains("Barack") && report.contains("People (0)"));
    let pages: Vec<String> = std::fs::read_dir(out.path().join("report"))
        .expect("report folder")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    assert!(
        !pages
            .iter()
            .any(|p| p.starts_with(&format!("{person}-"))
                || p.starts_with(&format!("person-{person}"))),
        "{pages:?}"
    );
    let stdout = run_ok(photos.path(), out.path(), &["--group-mode", "full"]);
    assert!(
        stdout.contains("0 analysed") && stdout.contains(" 0 faces"),
        "{stdout}"
    );
    let before = dump(&db);
    assert!(forget(&person).contains("already forgotten"));
    assert_eq!(dump(&db), before);
}

#[test]
fn report_pages_render_in_headless_chromium_with_faces_and_boxes() {
    let (_photos, out) = library(
        "chromium",
        &["obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg"],
    );
    let pages = out.path().join("report");

    // The index lists the one person with its representative crop and face count.
    let index = chromium_dom(out.path(), &out.path().join("report.html"));
    let cards: Vec<&str> = index.split("<a class=\"person\" ").skip(1).collect();
    assert_eq!(cards.len(), 1, "{index}");
    assert!(cards[0].contains("3 face(s)"), "{}", cards[0]);
    let crop = attr(cards[0], "<img src=\"");
    assert!(out.path().join(crop).is_file(), "index image {crop}");
    let person_href = attr(cards[0], "href=\"");
    let person_file = person_href
        .strip_prefix("report/")
        .expect("page in report/");

    // The person page shows its three faces, each crop on disk and linked to its photo.
    let person = chromium_dom(out.path(), &pages.join(person_file));
    let faces: Vec<&str> = person.split("<figure").skip(1).collect();
    assert_eq!(faces.len(), 3, "{person}");
    for face in &faces {
        assert!(pages.join(attr(face, "<img src=\"")).is_file(), "{face}");
    }
    let photo_file = attr(faces[0], "<a href=\"");
    assert!(photo_file.starts_with("photo-"), "{photo_file}");

    // The photo page shows the photo with the face's box linked back to the person.
    let photo = chromium_dom(out.path(), &pages.join(photo_file));
    let boxes: Vec<&str> = photo.split("<a class=\"box\" ").skip(1).collect();
    assert_eq!(boxes.len(), 1, "{photo}");
    assert_eq!(attr(boxes[0], "href=\""), person_file);
    let photo_src = attr(&photo, "<div class=\"photo\"><img src=\"");
    assert!(pages.join(photo_src).is_file(), "photo {photo_src}");

    // Rendered: the photo fills the page and the box's yellow border is drawn over it.
    let shot = out.path().join("photo.png");
    chromium(
        out.path(),
        &[
            "--window-size=800,700",
            &format!("--screenshot={}", shot.display()),
        ],
        &pages.join(photo_file),
    );
    let png = image::open(&shot).expect("screenshot").to_rgb8();
    let count = |f: &dyn Fn(&image::Rgb<u8>) -> bool| png.pixels().filter(|p| f(p)).count();
    let yellow = count(&|p| p[0] > 245 && (211..=231).contains(&p[1]) && p[2] < 15);
    let dark = count(&|p| p[0] < 100 && p[1] < 100 && p[2] < 100);
    assert!(yellow > 300, "box border pixels: {yellow}");
    assert!(dark > 10_000, "photo pixels: {dark}");
}

#[test]
fn find_ranks_the_person_and_photos_of_a_query_face() {
    let (_photos, out) = library("find", &["obama.jpg", "obama2.jpg", "biden.jpg"]);
    let groups = read_groups(out.path());
    let person = groups["persons"][0]["person_id"]
        .as_str()
        .expect("one person");
    let named = Command::new(env!("CARGO_BIN_EXE_facegroup"))
        .args([
            "person",
            "name",
            person,
            "Barack",
            "--out",
            path_str(out.path()),
        ])
        .output()
        .expect("start facegroup");
    assert_success(&named);

    // obama3.jpg is not in the library; its face is Obama's.
    let query = out.path().join("query.jpg");
    write(&query, &image_bytes("obama3.jpg"));
    let output = facegroup(&[
        "find",
        path_str(&query),
        "--out",
        path_str(out.path()),
        "--json",
    ])
    .output()
    .expect("start facegroup");
    assert_success(&output);
    let found: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    let faces = found.as_array().expect("one entry per query face");
    assert_eq!(faces.len(), 1, "{found}");
    let persons = faces[0]["persons"].as_array().expect("persons");
    assert_eq!(persons.len(), 1, "{found}");
    assert_eq!(persons[0]["person_id"], person);
    assert_eq!(persons[0]["name"], "Barack");
    let best = persons[0]["similarity"].as_f64().expect("similarity");
    assert!((0.4..1.0).contains(&best), "similarity {best}");
    let images: Vec<&str> = faces[0]["photos"]
        .as_array()
        .expect("photos")
        .iter()
        .filter_map(|p| p["image"].as_str())
        .collect();
    let mut sorted = images.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, ["obama.jpg", "obama2.jpg"], "Biden is not a match");
    assert_eq!(faces[0]["photos"][0]["similarity"].as_f64(), Some(best));
}

#[test]
fn missing_model_is_fatal_and_named() {
    let photos = TempDir::new("photos");
    copy_test_image("obama.jpg", photos.path());
    let out = TempDir::new("out");
    let models = TempDir::new("no-models");

    let output = facegroup(&[
        "run",
        path_str(photos.path()),
        "--out",
        path_str(out.path()),
    ])
    .arg("--models-dir")
    .arg(models.path())
    .output()
    .expect("start facegroup");

    assert!(!output.status.success(), "run without models succeeded");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("scrfd_500m_bnkps.onnx"), "stderr: {stderr}");
    assert!(stderr.contains("not found"), "stderr: {stderr}");
}

#[test]
fn bench_prints_the_json_the_comparison_script_reads() {
    let photos = TempDir::new("bench");
    copy_test_image("obama.jpg", photos.path());
    let output = facegroup(&[
        "bench",
        path_str(photos.path()),
        "--repeat",
        "2",
        "--warmup",
        "0",
    ])
    .args(["--threads", "1", "--json"])
    .output()
    .expect("start facegroup");
    assert_success(&output);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    // Key order depends on serde_json's `preserve_order` feature, which other workspace crates
    // may switch on; compare as sets.
    let mut keys: Vec<&str> = line
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    let mut expected = [
        "impl",
        "threads",
        "images",
        "faces",
        "seconds",
        "images_per_s",
        "faces_per_s",
        "peak_rss_mib",
    ];
    expected.sort_unstable();
    assert_eq!(keys, expected);
    assert_eq!(line["impl"], "facegroup");
    assert_eq!(line["threads"], 1);
    assert_eq!(line["images"], 2);
    assert_eq!(line["faces"], 2);
}

// ---- helpers ----

/// A folder of the named test photos and the output folder of one `facegroup run` over it.
/// The closest lookalikes of the dev sets (identity pairs with the highest cosine between their
/// mean embeddings, from `facegroup eval-groups DIR --lookalikes 8`), each grouped on its own as
/// a gallery of just those two people, must stay two people: no person may mix them. The
/// stand-in for relatives, which the dev sets do not label. Every pair among the five closest
/// of celeba-dev and the six closest of lfw-dev is here except the closest lfw-dev pair,
/// Hilary_Duff + Mary_Landrieu (3 photos each, mean cosine 0.40), which the defaults still merge
/// into one person (pairwise precision 0.40): a known miss, left visible in the README.
#[test]
fn lookalike_identities_stay_apart_at_the_defaults() {
    let pairs = [
        ("celeba-dev", "celeba_07365", "celeba_07496"),
        ("celeba-dev", "celeba_07330", "celeba_07480"),
        ("celeba-dev", "celeba_07253", "celeba_07499"),
        ("celeba-dev", "celeba_07247", "celeba_07337"),
        ("celeba-dev", "celeba_07386", "celeba_07496"),
        ("lfw-dev", "Eduardo_Duhalde", "Fernando_Henrique_Cardoso"),
        ("lfw-dev", "John_Ashcroft", "Kjell_Magne_Bondevik"),
        ("lfw-dev", "Chan_Gailey", "Tom_Watson"),
        ("lfw-dev", "Mariah_Carey", "Mary_Carey"),
        ("lfw-dev", "Cate_Blanchett", "Emma_Thompson"),
    ];
    let shared = repo_root().join("../shared/faces");
    if !shared.is_dir() {
        // The dev sets live outside the repo (CI has them); without them there is nothing to
        // group, which is said loudly rather than passed quietly.
        eprintln!("SKIPPED: {} not found", shared.display());
        return;
    }
    for (set, a, b) in pairs {
        let labels = std::fs::read_to_string(shared.join(set).join("labels.csv"))
            .unwrap_or_else(|e| panic!("{set}/labels.csv: {e}"));
        let data = TempDir::new(&format!("lookalikes-{a}"));
        let mut csv = String::from("path,identity\n");
        for line in labels.lines().skip(1) {
            let Some((path, identity)) = line.split_once(',') else {
                continue;
            };
            if identity != a && identity != b {
                continue;
            }
            let dst = data.path().join(path);
            std::fs::create_dir_all(dst.parent().expect("photo folder")).expect("folder");
            std::os::unix::fs::symlink(shared.join(set).join(path), &dst).expect("symlink");
            csv.push_str(&format!("{path},{identity}\n"));
        }
        write(&data.path().join("labels.csv"), csv.as_bytes());
        let out = TempDir::new("lookalikes-out");
        let output = facegroup(&[
            "eval-groups",
            path_str(data.path()),
            "--out",
            path_str(out.path()),
            "--json",
            "--no-baselines",
        ])
        .output()
        .expect("run facegroup");
        assert_success(&output);
        let row: serde_json::Value = String::from_utf8_lossy(&output.stdout)
            .lines()
            .find_map(|l| serde_json::from_str(l).ok())
            .unwrap_or_else(|| panic!("{a} + {b}: no JSON row"));
        let precision = row["pairwise"]["precision"].as_f64().expect("precision");
        assert!(precision >= 1.0, "{a} + {b} merged: {row}");
    }
}

fn library(label: &str, names: &[&str]) -> (TempDir, TempDir) {
    let photos = TempDir::new(&format!("{label}-photos"));
    for name in names {
        copy_test_image(name, photos.path());
    }
    let out = TempDir::new(&format!("{label}-out"));
    run_ok(photos.path(), out.path(), &[]);
    (photos, out)
}

/// `facegroup ARGS --out OUT` for a command on the store alone (no models), which must
/// succeed; returns its stdout.
fn on_store(out: &Path, args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_facegroup"))
        .args(args)
        .args(["--out", path_str(out)])
        .output()
        .expect("start facegroup");
    assert_success(&output);
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn read_groups(out: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(out.join("groups.json")).expect("groups.json");
    serde_json::from_str(&text).expect("groups.json is JSON")
}

/// Debian's headless Chromium on `page`, with a profile under `scratch` (installed by
/// scripts/setup.sh; `--no-sandbox` because tests may run as root). Returns stdout.
fn chromium(scratch: &Path, args: &[&str], page: &Path) -> String {
    let output = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
        ])
        .arg(format!(
            "--user-data-dir={}",
            scratch.join("chromium").display()
        ))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("start chromium (scripts/setup.sh installs it)");
    assert!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The DOM Chromium builds from `page`.
fn chromium_dom(scratch: &Path, page: &Path) -> String {
    let dom = chromium(scratch, &["--dump-dom"], page);
    assert!(
        dom.contains("</html>"),
        "no DOM for {}: {dom}",
        page.display()
    );
    dom
}

/// The quoted value that follows `prefix` (which ends in the opening quote) in `html`.
fn attr<'a>(html: &'a str, prefix: &str) -> &'a str {
    let start = html
        .find(prefix)
        .unwrap_or_else(|| panic!("no {prefix} in {html}"))
        + prefix.len();
    let len = html[start..].find('"').expect("closing quote");
    &html[start..start + len]
}

/// Every row of every table of a store but `runs` (which a command may append to), as text.
fn dump(db: &Path) -> Vec<String> {
    let conn = rusqlite::Connection::open(db).expect("open store");
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT IN ('runs', 'sqlite_sequence') ORDER BY name")
        .expect("list tables")
        .query_map([], |r| r.get(0))
        .expect("list tables")
        .collect::<rusqlite::Result<_>>()
        .expect("list tables");
    let mut rows = Vec::new();
    for table in tables {
        let mut stmt = conn
            .prepare(&format!("SELECT * FROM {table} ORDER BY 1"))
            .expect("select");
        let n = stmt.column_count();
        let mut q = stmt.query([]).expect("query");
        while let Some(row) = q.next().expect("row") {
            let cells: Vec<String> = (0..n)
                .map(|i| format!("{:?}", row.get_ref(i).expect("cell")))
                .collect();
            rows.push(format!("{table}: {}", cells.join(" | ")));
        }
    }
    rows
}

/// `facegroup run PHOTOS --out OUT EXTRA...`, which must succeed; returns its stdout.
fn run_ok(photos: &Path, out: &Path, extra: &[&str]) -> String {
    let output = facegroup(&["run", path_str(photos), "--out", path_str(out)])
        .args(extra)
        .output()
        .expect("start facegroup");
    assert_success(&output);
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs with one photo per batch and SIGKILLs the process once it says `batches` batches are
/// committed (the test hook makes it wait there).
fn kill_after_batches(photos: &Path, out: &Path, batches: usize) {
    use std::io::BufRead;
    let mut child = facegroup(&["run", path_str(photos), "--out", path_str(out)])
        .args(["--batch-size", "1"])
        .env("FACEGROUP_TEST_STOP_AFTER_BATCHES", batches.to_string())
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start facegroup");
    let stderr = child.stderr.take().expect("piped stderr");
    let mut reached = false;
    for line in std::io::BufReader::new(stderr).lines() {
        let line = line.expect("stderr line");
        if line.contains(&format!("committed {batches} batches")) {
            reached = true;
            break;
        }
    }
    // Child::kill sends SIGKILL on Unix.
    child.kill().expect("kill facegroup");
    let status = child.wait().expect("wait for facegroup");
    assert!(reached, "the run ended ({status}) before the test hook");
}

/// The binary with the repo's models and the ONNX Runtime library, whatever the caller's cwd.
fn facegroup(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_facegroup"));
    cmd.args(args)
        .arg("--ort-dylib-path")
        .arg(ort_dylib())
        .env("RUST_LOG", "warn")
        .env_remove("FACEGROUP_THREADS")
        .env_remove("FACEGROUP_PIPELINES")
        .current_dir(repo_root());
    cmd
}

fn assert_success(output: &Output) {
    assert!(
        output.status.success(),
        "facegroup failed: {}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn copy_test_image(name: &str, dir: &Path) {
    write(&dir.join(name), &image_bytes(name));
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temp path is UTF-8")
}

fn read_jsonl(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: {e}: {l}", path.display())))
        .collect()
}
