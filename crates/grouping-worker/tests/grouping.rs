//! The grouping worker binary against real servers (moto for SQS + S3, SecantusDB for
//! MongoDB), on synthetic faces stored in the shape the detection worker writes: the first
//! grouping of a gallery reads no S3 key that may not exist, concurrent jobs of one gallery end
//! in one committed run, an empty face set keeps the committed run, a runtime failure mid-job
//! exits 3 and releases the message, a crash at every write step followed by a rerun ends
//! in the state of an uninterrupted run, deletion jobs leave nothing of what they delete, and
//! users' corrections hold across full and incremental regroups and redelivery.
//!
//! The binary is the one cargo builds for these tests: the dev-dependency on
//! `facegroup-worker/testing` compiles its fault hook in; `cargo build` of the binary has none.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use facegroup_worker::gallery::GalleryStore;
use facegroup_worker::mongo::{encode_embedding, MongoStore};
use facegroup_worker::thumbs;
use mongodb::bson::{doc, spec::BinarySubtype, Binary, Document};
use serde_json::{json, Value};

use facegroup_testkit::*;

const GALLERY: &str = "g1";
/// The worker's default model version (detector + embedder file stems).
const MODEL_VERSION: &str = "scrfd_500m_bnkps+w600k_mbf";
const DIM: usize = 512;
/// The workers' default FACEGROUP_THUMBNAILS_PREFIX.
const THUMBNAILS: &str = "thumbnails/";

/// The grouping worker binary cargo built for these tests (with `facegroup-worker/testing`
/// through the dev-dependency, so the fault hooks are in).
fn worker_binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_facegroup-grouping-worker"))
}

/// This file's stack: the test kit's, plus the grouping queue (with its DLQ) and the helpers
/// below.
struct Stack {
    kit: TestStack,
    queue: String,
    dlq: String,
}

impl std::ops::Deref for Stack {
    type Target = TestStack;
    fn deref(&self) -> &TestStack {
        &self.kit
    }
}

/// The stack of `test`; with `recording`, moto records every request into that file.
async fn stack(test: &str, recording: Option<&Path>) -> Stack {
    let moto = match recording {
        Some(file) => start_moto_with(&[
            ("MOTO_ENABLE_RECORDING", "True"),
            ("MOTO_RECORDER_FILEPATH", file.to_str().expect("utf-8 path")),
        ]),
        None => start_moto(),
    };
    let logs = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("grouping-logs");
    let kit = TestStack::start(
        facegroup_worker::aws::loader(),
        moto,
        start_mongo(),
        &logs,
        test,
    )
    .await;
    let (queue, dlq) = create_queue(&kit.sqs, "group", 30, Some(5)).await;
    Stack {
        kit,
        queue,
        dlq: dlq.expect("dlq"),
    }
}

/// Grouping jobs of these tests take a second or two; the lease outlives a job's pauses.
const TIMING: WorkerTiming = WorkerTiming {
    visibility: 10,
    heartbeat: 2,
    idle_exit: 4,
};

impl Stack {
    /// Starts a grouping worker that drains the queue; `n` names its log file.
    fn worker(&self, n: usize, extra: &[(&str, &str)]) -> Child {
        let mut env = vec![("FACEGROUP_DRAIN", "true"), ("FACEGROUP_LEASE_SECS", "20")];
        env.extend_from_slice(extra);
        self.kit
            .worker(worker_binary(), &n.to_string(), &self.queue, TIMING, &env)
    }

    async fn send_job(&self, mode: &str) {
        self.send(&self.queue, json!({"gallery_id": GALLERY, "mode": mode}))
            .await;
    }

    fn faces(&self) -> mongodb::Collection<Document> {
        self.db.database("gallery_images").collection("faces")
    }

    fn galleries(&self) -> GalleryStore {
        GalleryStore::new(&MongoStore::from_client(&self.db))
    }

    /// Stores `count` faces of synthetic person `person`, one per photo, numbered from `first`,
    /// in the detection worker's document shape.
    async fn add_faces(&self, person: usize, first: usize, count: usize) {
        self.add_faces_in(GALLERY, person, first, count).await;
    }

    /// [`add_faces`](Self::add_faces) in gallery `gallery` (face ids start with `gallery/`).
    async fn add_faces_in(&self, gallery: &str, person: usize, first: usize, count: usize) {
        let docs: Vec<Document> = (first..first + count)
            .map(|i| {
                let image_id = format!("{gallery}/p{person}-img{i}");
                let embedding = synthetic_embedding(person, i);
                doc! {
                    "_id": format!("{image_id}:{MODEL_VERSION}:0"),
                    "image_id": &image_id,
                    "gallery_id": gallery,
                    "face_index": 0,
                    "model_version": MODEL_VERSION,
                    "bbox": {"x1": 0.0, "y1": 0.0, "x2": 100.0, "y2": 100.0},
                    "det_score": 0.9,
                    "keypoints": [[30.0, 40.0], [70.0, 40.0], [50.0, 60.0], [35.0, 80.0], [65.0, 80.0]],
                    "quality": {"sharpness": 200.0, "brightness": 120.0, "contrast": 40.0,
                                "highlights": 0.0, "shadows": 0.0, "yaw": 0.0, "pitch": 0.0,
                                "roll": 0.0, "face_size": 100.0, "det_score": 0.9,
                                "occlusion": 0.0, "overall": 0.9, "reasons": []},
                    "quality_ok": true,
                    "embedding": Binary { subtype: BinarySubtype::Generic, bytes: encode_embedding(&embedding) },
                    "embedding_dim": DIM as i32,
                }
            })
            .collect();
        self.faces().insert_many(docs).await.expect("insert faces");
    }

    async fn all_faces(&self) -> Vec<Document> {
        self.all_faces_in(GALLERY).await
    }

    async fn all_faces_in(&self, gallery: &str) -> Vec<Document> {
        self.find("gallery_images", "faces", doc! {"gallery_id": gallery})
            .await
    }

    /// The committed run JSON, by the key MongoDB records.
    async fn committed_run(&self) -> Value {
        self.committed_run_in(GALLERY).await
    }

    async fn committed_run_in(&self, gallery: &str) -> Value {
        let state = self.galleries().state(gallery).await.expect("state");
        let committed = state.committed.expect("a committed run");
        let run = self.json(&committed.key).await;
        assert_eq!(run["run_number"].as_u64(), Some(committed.run_number));
        run
    }
}

/// Person `p`'s face `i`: a fixed random centre per person plus small noise, 512-d.
fn synthetic_embedding(person: usize, i: usize) -> Vec<f32> {
    let mut state = 0x243f_6a88_85a3_08d3_u64 ^ (person as u64 + 1).wrapping_mul(0x9e37_79b9);
    let mut next = || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        ((state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40) as f32 / (1u64 << 23) as f32) - 1.0
    };
    let centre: Vec<f32> = (0..DIM).map(|_| next()).collect();
    let mut noise_state = (person as u64) << 32 | i as u64 | 1;
    let mut noise = || {
        noise_state ^= noise_state >> 12;
        noise_state ^= noise_state << 25;
        noise_state ^= noise_state >> 27;
        ((noise_state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40) as f32 / (1u64 << 23) as f32) - 1.0
    };
    centre.iter().map(|c| c + 0.3 * noise()).collect()
}

/// face id -> person id of a run JSON (unassigned faces map to None).
fn assignment(run: &Value) -> BTreeMap<String, Option<String>> {
    let mut out = BTreeMap::new();
    for p in run["persons"].as_array().expect("persons") {
        let pid = p["person_id"].as_str().expect("person id");
        for f in p["face_ids"].as_array().expect("face ids") {
            out.insert(
                f.as_str().expect("face id").to_string(),
                Some(pid.to_string()),
            );
        }
    }
    for f in run["unassigned"].as_array().expect("unassigned") {
        out.insert(f.as_str().expect("face id").to_string(), None);
    }
    out
}

/// The person ids of a run JSON.
fn run_person_ids(run: &Value) -> BTreeSet<String> {
    run["persons"]
        .as_array()
        .expect("persons")
        .iter()
        .map(|p| p["person_id"].as_str().expect("id").to_string())
        .collect()
}

/// Asserts every stored face carries the committed run's person id, written by that run or,
/// for faces an incremental run from summaries did not change, by an earlier one; and that the
/// gallery records the committed run's person ids as all written.
async fn assert_faces_match(s: &Stack, run: &Value) {
    assert_faces_match_in(s, GALLERY, run).await;
}

async fn assert_faces_match_in(s: &Stack, gallery: &str, run: &Value) {
    let run_number = check_faces(s, gallery, run, |id, by| {
        assert!(
            by.is_some_and(|n| n >= 1 && n <= run["run_number"].as_i64().unwrap_or(0)),
            "{id} written by run {by:?}, committed {}",
            run["run_number"]
        );
    })
    .await;
    let state = s.galleries().state(gallery).await.expect("state");
    assert_eq!(state.person_ids_run, run_number as u64, "{gallery}");
}

/// [`assert_faces_match_in`], with every face written by the committed run itself (a run that
/// read every face).
async fn assert_all_faces_written_in(s: &Stack, gallery: &str, run: &Value) {
    let run_number = run["run_number"].as_i64().expect("run number");
    check_faces(s, gallery, run, |id, by| {
        assert_eq!(by, Some(run_number), "{id} written by the committed run");
    })
    .await;
}

/// Checks that the gallery holds exactly the committed run's faces with its person ids, and
/// passes each face's id and `person_run` to `written`; returns the run number.
async fn check_faces(
    s: &Stack,
    gallery: &str,
    run: &Value,
    written: impl Fn(&str, Option<i64>),
) -> i64 {
    let want = assignment(run);
    let faces = s.all_faces_in(gallery).await;
    assert_eq!(
        faces.len(),
        want.len(),
        "the committed run holds every face"
    );
    for f in &faces {
        let id = f.get_str("_id").expect("id");
        let got = f.get_str("person_id").ok().map(str::to_string);
        assert_eq!(Some(&got), want.get(id), "person id of {id}");
        written(id, f.get_i64("person_run").ok());
    }
    run["run_number"].as_i64().expect("run number")
}

/// S3 keys a recording shows read with GET (path-style `/{bucket}/{key}`).
fn recorded_gets(recording: &Path, bucket: &str) -> Vec<String> {
    let text = std::fs::read_to_string(recording).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["method"] == "GET")
        .filter_map(|e| {
            let url = e["url"].as_str()?.to_string();
            let path = url.split("://").nth(1).unwrap_or(&url);
            let path = &path[path.find('/')?..];
            let path = path.split('?').next()?;
            path.strip_prefix(&format!("/{bucket}/"))
                .map(str::to_string)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_grouping_reads_no_key_that_may_not_exist() {
    let dir = TempDir::new("grouping-recording");
    let recording = dir.path().join("moto-recording.jsonl");
    let s = stack("first", Some(&recording)).await;
    for p in 0..3 {
        s.add_faces(p, 0, 4).await;
    }
    s.send_job("incremental").await;
    s.run_worker(0).await;

    // Under GetObject-without-ListBucket a read of a missing key is a 403; the first job of a
    // new gallery must not read anything under groups/ at all. (Taken before this test's own
    // reads, which the recording sees too.)
    let gets = recorded_gets(&recording, &s.bucket);
    assert!(gets.is_empty(), "first grouping read {gets:?}");
    let run = s.committed_run().await;
    assert_eq!(run["persons"].as_array().map(Vec::len), Some(3));
    assert_faces_match(&s, &run).await;
    let latest = s.json(&format!("groups/{GALLERY}/latest.json")).await;
    assert_eq!(latest["run_id"], run["run_id"]);

    // The next job reads exactly the committed run, by its key.
    s.add_faces(3, 0, 3).await;
    s.send_job("full").await;
    let before = recorded_gets(&recording, &s.bucket).len();
    s.run_worker(1).await;
    let gets = recorded_gets(&recording, &s.bucket).split_off(before);
    let committed_key = format!(
        "groups/{GALLERY}/{}.json",
        run["run_id"].as_str().expect("id")
    );
    assert_eq!(gets, vec![committed_key]);
    let run2 = s.committed_run().await;
    assert_eq!(run2["persons"].as_array().map(Vec::len), Some(4));
    assert_faces_match(&s, &run2).await;
    // Persons that continue keep their ids.
    assert!(
        run_person_ids(&run).is_subset(&run_person_ids(&run2)),
        "{:?} -> {:?}",
        run_person_ids(&run),
        run_person_ids(&run2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_jobs_of_one_gallery_end_in_one_committed_run() {
    let s = stack("concurrent", None).await;
    const PERSONS: usize = 5;
    for p in 0..PERSONS {
        s.add_faces(p, 0, 3).await;
    }
    let slots = [("FACEGROUP_MAX_IN_FLIGHT", "4")];
    let mut workers = vec![s.worker(0, &slots), s.worker(1, &slots)];
    // 20 jobs while faces keep arriving; the last job is sent after the last face.
    let mut next_face = [3; PERSONS];
    for j in 0..20 {
        let p = j % PERSONS;
        s.add_faces(p, next_face[p], 1).await;
        next_face[p] += 1;
        s.send_job(if j % 3 == 0 { "full" } else { "incremental" })
            .await;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    for w in &mut workers {
        assert_eq!(wait_exit(w, Duration::from_secs(300)).await.code(), Some(0));
    }

    assert_eq!(
        queue_counts(&s.sqs, &s.dlq).await,
        (0, 0),
        "nothing in the DLQ"
    );
    assert_eq!(queue_counts(&s.sqs, &s.queue).await, (0, 0));
    let history = s
        .galleries()
        .commit_history(GALLERY)
        .await
        .expect("history");
    assert!(!history.is_empty());
    assert!(
        history.windows(2).all(|w| w[0] < w[1]),
        "run numbers in commit order: {history:?}"
    );
    let run = s.committed_run().await;
    assert_eq!(
        Some(run["run_number"].as_u64().expect("n")),
        history.last().copied()
    );
    assert_eq!(run["face_count"].as_u64(), Some((3 * PERSONS + 20) as u64));
    assert_faces_match(&s, &run).await;
    // The synthetic persons came out whole and pure.
    let persons = run["persons"].as_array().expect("persons");
    assert_eq!(persons.len(), PERSONS, "{run}");
    for p in persons {
        let owners: BTreeSet<&str> = p["face_ids"]
            .as_array()
            .expect("faces")
            .iter()
            .filter_map(|f| f.as_str()?.split('-').next())
            .collect();
        assert_eq!(owners.len(), 1, "{p}");
    }
    // Every run number ever written belongs to a distinct lease (no two runs share one).
    let runs = s.keys(&format!("groups/{GALLERY}/run-")).await;
    assert!(runs.len() >= history.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_face_set_keeps_the_committed_run() {
    let s = stack("empty", None).await;
    for p in 0..2 {
        s.add_faces(p, 0, 3).await;
    }
    s.send_job("full").await;
    s.run_worker(0).await;
    let run = s.committed_run().await;
    let latest_key = format!("groups/{GALLERY}/latest.json");
    let latest = s.json(&latest_key).await;

    // All faces gone (e.g. a model switch not yet re-detected): nothing is committed.
    let saved = s.all_faces().await;
    s.faces().delete_many(doc! {}).await.expect("delete");
    s.send_job("full").await;
    s.run_worker(1).await;
    assert_eq!(s.committed_run().await, run);
    assert_eq!(s.json(&latest_key).await, latest);
    assert_eq!(queue_counts(&s.sqs, &s.dlq).await, (0, 0));

    // The faces come back with a new person: old persons keep their ids, the new one is
    // numbered after them.
    s.faces().insert_many(saved).await.expect("restore");
    s.add_faces(2, 0, 3).await;
    s.send_job("full").await;
    s.run_worker(2).await;
    let run2 = s.committed_run().await;
    assert_faces_match(&s, &run2).await;
    assert_eq!(
        run_person_ids(&run),
        BTreeSet::from(["person-1".to_string(), "person-2".to_string()])
    );
    assert_eq!(
        run_person_ids(&run2),
        BTreeSet::from([
            "person-1".to_string(),
            "person-2".to_string(),
            "person-3".to_string()
        ])
    );
    assert_eq!(
        s.galleries()
            .commit_history(GALLERY)
            .await
            .expect("history")
            .len(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_failure_mid_job_exits_3_and_releases_the_message() {
    let s = stack("fault", None).await;
    for p in 0..2 {
        s.add_faces(p, 0, 3).await;
    }
    s.send_job("full").await;
    let mut w = s.worker(0, &[("FACEGROUP_TEST_FAULT", "grouping-runtime")]);
    let status = wait_exit(&mut w, Duration::from_secs(180)).await;
    assert_eq!(
        status.code(),
        Some(3),
        "a failing kNN step and probe is a runtime failure"
    );
    // Released, not deleted (and not dead-lettered); nothing was committed.
    assert_eq!(queue_counts(&s.sqs, &s.queue).await, (1, 0));
    assert_eq!(queue_counts(&s.sqs, &s.dlq).await, (0, 0));
    assert_eq!(
        s.galleries().state(GALLERY).await.expect("state").committed,
        None
    );

    // A healthy worker takes the message (and the gallery's lease) at once.
    s.run_worker(1).await;
    assert_eq!(queue_counts(&s.sqs, &s.queue).await, (0, 0));
    let run = s.committed_run().await;
    assert_faces_match(&s, &run).await;
}

/// The fault-hook steps of a grouping job, in order, and the consumer's last one.
const CRASH_STEPS: [&str; 7] = [
    "after_lease",
    "after_clear_pending",
    "after_put_run",
    "after_commit",
    "after_set_person_ids",
    "after_put_latest",
    "before_delete",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_every_step_then_a_rerun_ends_as_an_uninterrupted_run() {
    let s = stack("crash", None).await;
    // A gallery and a queue per run: the reference run and one per step, all at once.
    let mut runs = Vec::new();
    for (i, step) in std::iter::once(REFERENCE).chain(CRASH_STEPS).enumerate() {
        let gallery = format!("crash-{i}");
        for p in 0..3 {
            s.add_faces_in(&gallery, p, 0, 4).await;
        }
        let (queue, _) = create_queue(&s.sqs, &format!("group-{i}"), 30, None).await;
        s.send(&queue, json!({"gallery_id": gallery, "mode": "full"}))
            .await;
        runs.push((step, gallery, queue));
    }
    // Short visibility, so the reruns get the crashed jobs' messages back within seconds.
    let timing = WorkerTiming {
        visibility: 3,
        heartbeat: 1,
        idle_exit: 2,
    };
    let matrix: Vec<CrashRun> = runs
        .iter()
        .map(|(step, _, queue)| CrashRun {
            step,
            queue,
            env: vec![],
        })
        .collect();
    s.crash_then_rerun(worker_binary(), timing, &matrix, 8)
        .await;

    let reference = end_state(&s, &runs[0].1).await;
    assert_eq!(
        reference["persons"].as_array().map(Vec::len),
        Some(3),
        "{reference}"
    );
    for (step, gallery, queue) in &runs {
        assert_eq!(end_state(&s, gallery).await, reference, "crash {step}");
        assert_eq!(queue_counts(&s.sqs, queue).await, (0, 0), "crash {step}");
    }
}

/// What a gallery ends with, with the gallery's own prefix taken off the face ids so galleries
/// compare: the committed run's persons and unassigned faces, after checking that every face
/// carries that run's person id and `latest.json` points at it.
async fn end_state(s: &Stack, gallery: &str) -> Value {
    let run = s.committed_run_in(gallery).await;
    assert_faces_match_in(s, gallery, &run).await;
    let latest = s.json(&format!("groups/{gallery}/latest.json")).await;
    assert_eq!(latest["run_id"], run["run_id"], "{gallery}: latest.json");
    // Every run JSON left is one that was committed (a crashed attempt's is cleaned up).
    let history = s
        .galleries()
        .commit_history(gallery)
        .await
        .expect("history");
    for key in s.keys(&format!("groups/{gallery}/run-")).await {
        let n: u64 = key
            .rsplit("run-")
            .next()
            .and_then(|k| k.strip_suffix(".json"))
            .and_then(|k| k.parse().ok())
            .unwrap_or_else(|| panic!("run key {key}"));
        assert!(
            history.contains(&n),
            "{key} was never committed ({history:?})"
        );
    }
    let prefix = format!("{gallery}/");
    let strip = |ids: &Value| -> Vec<String> {
        ids.as_array()
            .expect("ids")
            .iter()
            .map(|f| {
                let f = f.as_str().expect("face id");
                f.strip_prefix(&prefix).unwrap_or(f).to_string()
            })
            .collect()
    };
    let persons: Vec<Value> = run["persons"]
        .as_array()
        .expect("persons")
        .iter()
        .map(|p| json!({"person_id": p["person_id"], "face_ids": strip(&p["face_ids"])}))
        .collect();
    json!({"persons": persons, "unassigned": strip(&run["unassigned"])})
}

/// Everything stored, as JSON text per document/object: the faces, images and galleries
/// collections and every object in the bucket (listed, not assumed).
async fn everything(s: &Stack) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (db, coll) in [
        ("gallery_images", "faces"),
        ("huemn", "images"),
        ("huemn", "galleries"),
        ("huemn", "person_corrections"),
    ] {
        for d in all_docs(s, db, coll).await {
            let id = format!(
                "{coll}:{}",
                d.get("_id").map(|b| b.to_string()).unwrap_or_default()
            );
            out.insert(id, d.to_string());
        }
    }
    for (key, body) in facegroup_testkit::s3_objects(&s.s3, &s.bucket).await {
        out.insert(
            format!("s3:{key}"),
            String::from_utf8_lossy(&body).into_owned(),
        );
    }
    out
}

/// [`everything`] but the gallery documents (every job takes a lease token there).
fn without_gallery(m: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    m.iter()
        .filter(|(k, _)| !k.starts_with("galleries:"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Every document of `db.coll`.
async fn all_docs(s: &Stack, db: &str, coll: &str) -> Vec<Document> {
    s.find(db, coll, doc! {}).await
}

/// Asserts no stored name or content mentions `needle`.
fn assert_gone(all: &BTreeMap<String, String>, needle: &str) {
    let hits: Vec<&String> = all
        .iter()
        .filter(|(k, v)| k.contains(needle) || v.contains(needle))
        .map(|(k, _)| k)
        .collect();
    assert!(hits.is_empty(), "{needle} still in {hits:?}");
}

impl Stack {
    /// The status document, result JSON and face thumbnails the detection worker leaves for
    /// each stored image.
    async fn add_image_records(&self) {
        let faces = self.all_faces().await;
        let mut by_image: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for f in &faces {
            let image = f.get_str("image_id").expect("image id");
            let image = image.strip_prefix(&format!("{GALLERY}/")).expect("scoped");
            by_image
                .entry(image.to_string())
                .or_default()
                .push(f.get_str("_id").expect("id").to_string());
        }
        for id in faces.iter().filter_map(|f| f.get_str("_id").ok()) {
            let keys = thumbs::keys(THUMBNAILS, id).expect("thumbnail keys");
            for key in [keys.aligned, keys.context] {
                self.put(&key, b"\xFF\xD8 a face".to_vec()).await;
            }
        }
        for (image, ids) in by_image {
            self.db
                .database("huemn")
                .collection::<Document>("images")
                .insert_one(doc! {"_id": format!("{GALLERY}/{image}"), "image_id": &image,
                    "gallery_id": GALLERY, "bucket": "photos", "key": format!("uploads/{image}.jpg"),
                    "status": "done", "face_count": ids.len() as i32,
                    "metadata": {"uploader": "someone@example.com"}})
                .await
                .expect("insert image");
            let body = json!({"image_id": image, "gallery_id": GALLERY,
                "faces": ids.iter().map(|id| json!({"face_id": id})).collect::<Vec<_>>()});
            self.s3
                .put_object()
                .bucket(&self.bucket)
                .key(format!("faces/{GALLERY}/{image}.json"))
                .body(body.to_string().into_bytes().into())
                .send()
                .await
                .expect("put result");
        }
    }

    async fn put(&self, key: &str, body: Vec<u8>) {
        self.s3
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(body.into())
            .send()
            .await
            .unwrap_or_else(|e| panic!("put {key}: {e:?}"));
    }

    /// Runs one draining worker (log `n`) over what is queued; it must exit 0.
    async fn run_worker(&self, n: usize) {
        let mut w = self.worker(n, &[]);
        assert_eq!(
            wait_exit(&mut w, Duration::from_secs(180)).await.code(),
            Some(0)
        );
    }

    /// [`run_worker`](Self::run_worker), then the queue and its DLQ are empty.
    async fn drain(&self, n: usize) {
        self.run_worker(n).await;
        assert_eq!(queue_counts(&self.sqs, &self.dlq).await, (0, 0));
        assert_eq!(queue_counts(&self.sqs, &self.queue).await, (0, 0));
    }

    /// Sends `body` twice in turn: after the first run and after the redelivered one, the
    /// stores are the same (but for the lease counter a job takes).
    async fn send_twice(&self, body: Value, n: usize) -> BTreeMap<String, String> {
        self.send(&self.queue, body.clone()).await;
        self.drain(n).await;
        let once = everything(self).await;
        let state = self.galleries().state(GALLERY).await.expect("state");
        self.send(&self.queue, body.clone()).await;
        self.drain(n + 1).await;
        let twice = everything(self).await;
        assert_eq!(without_gallery(&twice), without_gallery(&once), "{body}");
        let again = self.galleries().state(GALLERY).await.expect("state");
        assert_eq!(again.committed, state.committed, "{body}");
        assert_eq!(again.next_person, state.next_person, "{body}");
        twice
    }
}

fn person_of(run: &Value, face_prefix: &str) -> String {
    run["persons"]
        .as_array()
        .expect("persons")
        .iter()
        .find(|p| {
            p["face_ids"]
                .as_array()
                .expect("faces")
                .iter()
                .any(|f| f.as_str().is_some_and(|f| f.starts_with(face_prefix)))
        })
        .and_then(|p| p["person_id"].as_str())
        .expect("a person")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_jobs_leave_nothing_behind_and_regrouping_brings_nothing_back() {
    let s = stack("deletion", None).await;
    for p in 0..4 {
        s.add_faces(p, 0, 3).await;
    }
    s.add_image_records().await;
    // A thumbnail of an attempt that died before it stored its face (no document names it).
    let orphan = format!("{THUMBNAILS}{GALLERY}/p0-img0/other+model/0.aligned.jpg");
    s.put(&orphan, b"\xFF\xD8 orphan".to_vec()).await;
    s.send_job("full").await;
    s.drain(0).await;
    let run = s.committed_run().await;
    assert_eq!(run["persons"].as_array().map(Vec::len), Some(4));
    // Each person's representative is named with its thumbnails, which exist.
    let reps = run["representatives"].as_array().expect("representatives");
    assert_eq!(reps.len(), 4);
    for (p, r) in run["persons"].as_array().expect("persons").iter().zip(reps) {
        assert_eq!(r["person_id"], p["person_id"]);
        assert_eq!(r["face_id"], p["representative"]);
        let keys = thumbs::keys(THUMBNAILS, r["face_id"].as_str().expect("face id")).expect("keys");
        assert_eq!(r["thumbnail_key"], json!(keys.aligned));
        assert_eq!(r["context_key"], json!(keys.context));
        assert!(s.keys(&keys.aligned).await.contains(&keys.aligned));
    }
    let p1 = person_of(&run, &format!("{GALLERY}/p1-"));
    let p2 = person_of(&run, &format!("{GALLERY}/p2-"));
    // Names are what users said about persons: they go with what is deleted.
    for (n, (p, name)) in [(0, "Zoe"), (1, "Pia"), (2, "Max")].into_iter().enumerate() {
        let person_id = person_of(&run, &format!("{GALLERY}/p{p}-"));
        s.send(
            &s.queue,
            json!({"type": "correction", "gallery_id": GALLERY,
            "action": "name", "person_id": person_id, "name": name}),
        )
        .await;
        s.drain(20 + n).await;
    }
    assert_eq!(all_docs(&s, "huemn", "person_corrections").await.len(), 3);

    // One image: a tombstone is all that is left of it, everywhere; redelivered, nothing changes.
    let all = s
        .send_twice(
            json!({"type": "delete", "scope": "image", "gallery_id": GALLERY, "image_id": "p0-img0"}),
            1,
        )
        .await;
    assert!(all.contains_key(&format!("images:\"{GALLERY}/p0-img0\"")));
    let others: BTreeMap<_, _> = all
        .into_iter()
        .filter(|(k, _)| !k.starts_with("images:"))
        .collect();
    assert_gone(&others, "p0-img0");
    assert!(s
        .keys(&format!("{THUMBNAILS}{GALLERY}/p0-img0/"))
        .await
        .is_empty());
    assert!(!s
        .keys(&format!("{THUMBNAILS}{GALLERY}/p0-img1/"))
        .await
        .is_empty());
    let tomb: Document =
        s.db.database("huemn")
            .collection::<Document>("images")
            .find_one(doc! {"_id": format!("{GALLERY}/p0-img0")})
            .await
            .expect("find")
            .expect("tombstone");
    let fields: BTreeSet<&str> = tomb.keys().map(String::as_str).collect();
    assert_eq!(
        fields,
        BTreeSet::from(["_id", "gallery_id", "status", "deleted_at"]),
        "{tomb}"
    );
    assert_eq!(tomb.get_str("status"), Ok("deleted"));
    let run = s.committed_run().await;
    assert_eq!(run["face_count"].as_u64(), Some(11));
    assert_faces_match(&s, &run).await;

    // A person, only its grouping: the faces stay, unassigned; the id is retired.
    s.send_twice(
        json!({"type": "delete", "scope": "person", "gallery_id": GALLERY, "person_id": p1, "faces": false}),
        3,
    )
    .await;
    let run = s.committed_run().await;
    let a = assignment(&run);
    let p1_faces: Vec<_> = a
        .iter()
        .filter(|(f, _)| f.starts_with(&format!("{GALLERY}/p1-")))
        .collect();
    assert_eq!(p1_faces.len(), 3);
    assert!(p1_faces.iter().all(|(_, p)| p.is_none()), "{p1_faces:?}");
    assert_faces_match(&s, &run).await;
    let all = everything(&s).await;
    assert_gone(&all, &format!("\"{p1}\""));
    assert_gone(&all, "Pia");

    // A person with its faces: gone from faces, result JSONs and runs.
    let all = s
        .send_twice(
            json!({"type": "delete", "scope": "person", "gallery_id": GALLERY, "person_id": p2, "faces": true}),
            5,
        )
        .await;
    assert_gone(&all, &format!("\"{p2}\""));
    assert_gone(&all, "Max");
    for i in 0..3 {
        assert_gone(&all, &format!("{GALLERY}/p2-img{i}:"));
        assert_gone(&all, &format!("{THUMBNAILS}{GALLERY}/p2-img{i}/"));
    }
    // The dissolved person's faces keep theirs.
    assert_eq!(s.keys(&format!("{THUMBNAILS}{GALLERY}/p1-")).await.len(), 6);
    let json = &all[&format!("s3:faces/{GALLERY}/p2-img0.json")];
    assert!(json.contains("\"faces\": []"), "{json}");

    // A full regroup reads only what is left: p1's faces form a person under a new id.
    s.send_job("full").await;
    s.drain(7).await;
    let run = s.committed_run().await;
    assert_faces_match(&s, &run).await;
    assert_eq!(run["face_count"].as_u64(), Some(8));
    let all = everything(&s).await;
    for i in 0..3 {
        assert_gone(&all, &format!("{GALLERY}/p2-img{i}:"));
    }
    assert_gone(&all, &format!("{GALLERY}/p0-img0:"));
    assert_gone(&all, &format!("\"{p1}\""));
    assert_gone(&all, &format!("\"{p2}\""));
    let regrouped = person_of(&run, &format!("{GALLERY}/p1-"));
    assert_eq!(regrouped, "person-5", "a new id after the four handed out");

    // The gallery: tombstones for its images and itself, nothing else, in MongoDB or S3.
    let all = s
        .send_twice(
            json!({"type": "delete", "scope": "gallery", "gallery_id": GALLERY}),
            8,
        )
        .await;
    s.send_job("full").await;
    s.drain(10).await;
    let after_regroup = everything(&s).await;
    assert_eq!(
        after_regroup.keys().collect::<Vec<_>>(),
        all.keys().collect::<Vec<_>>()
    );
    let images = all_docs(&s, "huemn", "images").await;
    assert_eq!(images.len(), 12);
    for d in &images {
        let fields: BTreeSet<&str> = d.keys().map(String::as_str).collect();
        assert_eq!(
            fields,
            BTreeSet::from(["_id", "gallery_id", "status", "deleted_at"]),
            "{d}"
        );
    }
    let rest: Vec<&String> = after_regroup
        .keys()
        .filter(|k| !k.starts_with("images:"))
        .collect();
    assert_eq!(
        rest,
        [&format!("galleries:\"{GALLERY}\"")],
        "only the gallery tombstone"
    );
    let gallery = &after_regroup[&format!("galleries:\"{GALLERY}\"")];
    assert!(
        gallery.contains("deleted_at") && !gallery.contains("committed") && !gallery.contains("p0"),
        "{gallery}"
    );
}

/// The person of `run` holding face `face_id`, if any.
fn holder(run: &Value, face_id: &str) -> Option<String> {
    assignment(run).get(face_id).cloned().flatten()
}

fn face(person: usize, i: usize) -> String {
    format!("{GALLERY}/p{person}-img{i}:{MODEL_VERSION}:0")
}

/// The person `person_id` of `run` as JSON.
fn person_json<'a>(run: &'a Value, person_id: &str) -> &'a Value {
    run["persons"]
        .as_array()
        .expect("persons")
        .iter()
        .find(|p| p["person_id"] == person_id)
        .unwrap_or_else(|| panic!("no {person_id} in {run}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrections_hold_across_full_and_incremental_regroups_and_redelivery() {
    let s = stack("corrections", None).await;
    for p in 0..4 {
        s.add_faces(p, 0, 4).await;
    }
    s.send_job("full").await;
    s.drain(0).await;
    let run = s.committed_run().await;
    let ids: Vec<String> = (0..4)
        .map(|p| person_of(&run, &format!("{GALLERY}/p{p}-")))
        .collect();
    let correction = |fields: Value| {
        let mut body = json!({"type": "correction", "gallery_id": GALLERY});
        if let (Some(b), Some(f)) = (body.as_object_mut(), fields.as_object()) {
            b.extend(f.clone());
        }
        body
    };

    // Each correction sent twice: the second delivery changes nothing (send_twice asserts it).
    s.send_twice(
        correction(json!({"action": "merge", "into": ids[0], "from": [ids[1]]})),
        1,
    )
    .await;
    let rejected = face(2, 0);
    s.send_twice(
        correction(json!({"action": "not_person", "face_id": rejected, "person_id": ids[2]})),
        3,
    )
    .await;
    s.send_twice(
        correction(json!({"action": "name", "person_id": ids[3], "name": "Ana"})),
        5,
    )
    .await;
    // A correction naming what is not there is refused, and changes nothing.
    let before = everything(&s).await;
    s.send(
        &s.queue,
        correction(json!({"action": "name", "person_id": "person-99", "name": "Nobody"})),
    )
    .await;
    s.drain(7).await;
    assert!(
        without_gallery(&everything(&s).await) == without_gallery(&before),
        "a refused correction changed the stores"
    );

    let holds = |run: &Value, faces_per_person: usize| {
        // The merge: persons 0 and 1 are one person (their synthetic centres are far apart, so
        // clustering alone splits them), and the merged-away id is gone.
        for p in 0..2 {
            for i in 0..faces_per_person {
                assert_eq!(holder(run, &face(p, i)), Some(ids[0].clone()), "{run}");
            }
        }
        assert!(!run_person_ids(run).contains(&ids[1]), "{run}");
        // Not this person: the face never returns to it (it is close to the person's centre).
        assert_ne!(holder(run, &rejected), Some(ids[2].clone()), "{run}");
        // Its other faces at the time were confirmed by the correction: they stay. (New faces
        // as close to the rejected face as to the person may go either way.)
        for i in 1..4 {
            assert_eq!(holder(run, &face(2, i)), Some(ids[2].clone()), "{run}");
        }
        // The named person keeps its id and name.
        let ana = person_json(run, &ids[3]);
        assert_eq!(ana["name"], "Ana", "{run}");
        for i in 0..faces_per_person {
            assert_eq!(holder(run, &face(3, i)), Some(ids[3].clone()), "{run}");
        }
    };
    let run = s.committed_run().await;
    holds(&run, 4);
    assert_faces_match(&s, &run).await;

    // A full regroup re-clusters every face under the corrections.
    s.send_job("full").await;
    s.drain(8).await;
    let run = s.committed_run().await;
    holds(&run, 4);
    assert_faces_match(&s, &run).await;

    // New faces, filed incrementally, then everything regrouped again.
    for p in 0..4 {
        s.add_faces(p, 4, 2).await;
    }
    s.send_job("incremental").await;
    s.drain(9).await;
    let run = s.committed_run().await;
    holds(&run, 6);
    assert_faces_match(&s, &run).await;
    s.send_job("full").await;
    s.drain(10).await;
    let run = s.committed_run().await;
    holds(&run, 6);
    assert_faces_match(&s, &run).await;

    // Split: the face becomes a new person of its own, and stays one.
    let split = face(0, 5);
    s.send_twice(correction(json!({"action": "split", "face_id": split})), 11)
        .await;
    let run = s.committed_run().await;
    let new = holder(&run, &split).expect("split face has a person");
    assert!(!ids.contains(&new), "{new} is a new id");
    assert_eq!(
        person_json(&run, &new)["face_ids"].as_array().map(Vec::len),
        Some(1)
    );
    s.send_job("full").await;
    s.drain(13).await;
    let run = s.committed_run().await;
    assert_eq!(holder(&run, &split), Some(new));
}

/// A committed run sends `gallery.grouped` to the job's callback, signed, before a draining
/// worker exits; its counts and run are the committed run's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_run_calls_the_jobs_callback() {
    const SECRET: &str = "grouping-events-secret";
    let s = stack("events", None).await;
    let receiver = HttpReceiver::start(0, &[]).await;
    for p in 0..2 {
        s.add_faces(p, 0, 5).await;
    }
    s.send(
        &s.queue,
        json!({"gallery_id": GALLERY, "mode": "full", "callback": receiver.url("/grouped")}),
    )
    .await;
    let mut worker = s.worker(
        0,
        &[
            ("FACEGROUP_CALLBACK_ALLOWED_HOSTS", "127.0.0.1"),
            ("FACEGROUP_CALLBACK_ALLOW_LOOPBACK", "true"),
            ("FACEGROUP_CALLBACK_ALLOW_HTTP", "true"),
            ("FACEGROUP_CALLBACK_SECRET", SECRET),
        ],
    );
    let status = wait_exit(&mut worker, Duration::from_secs(120)).await;
    assert_eq!(status.code(), Some(0));

    let run = s.committed_run().await;
    let got = receiver.requests();
    assert_eq!(got.len(), 1, "{got:?}");
    let r = &got[0];
    assert_eq!(r.path, "/grouped");
    let ts = r.header("x-facegroup-timestamp").expect("timestamp");
    let sig = r.header("x-facegroup-signature").expect("signature");
    assert!(facegroup_worker::events::verify_signature(
        SECRET.as_bytes(),
        ts,
        &r.body,
        sig
    ));
    let event: Value = serde_json::from_slice(&r.body).expect("json");
    assert_eq!(event["type"], "gallery.grouped");
    assert_eq!(event["gallery_id"], GALLERY);
    assert_eq!(event["run_number"], run["run_number"]);
    assert_eq!(event["run_id"], run["run_id"]);
    assert_eq!(event["person_count"], 2);
    assert_eq!(event["face_count"], 10);
    let entries = s
        .find("huemn", "event_outbox", doc! {"type": "gallery.grouped"})
        .await;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].get_str("status"), Ok("delivered"));
}

/// A gallery for the summary tests: five persons of five faces and two strangers grouped by a
/// full job (run 1, which leaves person summaries), then new faces: two more of each person,
/// a new stranger and two faces of a new person. Returns the committed run 1 and what today's
/// full-read incremental grouping (`assign_new_faces` over every stored face) makes of it.
async fn grouped_then_new_faces(
    s: &Stack,
    gallery: &str,
) -> (Value, BTreeMap<String, Option<String>>) {
    for p in 0..5 {
        s.add_faces_in(gallery, p, 0, 5).await;
    }
    for p in [100, 101] {
        s.add_faces_in(gallery, p, 0, 1).await;
    }
    s.send(&s.queue, json!({"gallery_id": gallery, "mode": "full"}))
        .await;
    s.drain(0).await;
    let run1 = s.committed_run_in(gallery).await;
    assert_eq!(run1["persons"].as_array().map(Vec::len), Some(5), "{run1}");
    let state = s.galleries().state(gallery).await.expect("state");
    let summary_key = state
        .committed
        .as_ref()
        .and_then(|c| c.summary_key.clone())
        .expect("a full run leaves person summaries");
    assert!(s.keys(&summary_key).await.contains(&summary_key));
    assert_eq!(state.person_ids_run, 1);

    for p in 0..5 {
        s.add_faces_in(gallery, p, 5, 2).await;
    }
    s.add_faces_in(gallery, 102, 0, 1).await;
    s.add_faces_in(gallery, 103, 0, 2).await;
    let faces = MongoStore::from_client(&s.db)
        .gallery_faces(gallery, MODEL_VERSION)
        .await
        .expect("faces");
    let previous = facegroup_core::Groups {
        persons: serde_json::from_value(run1["persons"].clone()).expect("persons"),
        unassigned: serde_json::from_value(run1["unassigned"].clone()).expect("unassigned"),
    };
    let cfg = facegroup_core::GroupConfig::default();
    let expected = facegroup_core::assign_new_faces(&faces, &previous, &cfg, None).expect("assign");
    let expected = assignment(&serde_json::to_value(&expected).expect("json"));
    // The scene exercises both outcomes: new faces joining persons, new faces left out.
    let new_joined =
        (0..5).filter(|p| expected[&format!("{gallery}/p{p}-img5:{MODEL_VERSION}:0")].is_some());
    assert_eq!(new_joined.count(), 5, "{expected:?}");
    assert_eq!(
        expected[&format!("{gallery}/p103-img0:{MODEL_VERSION}:0")],
        None
    );
    (run1, expected)
}

/// The `person_run` of every stored face of `gallery`, by face id.
async fn person_runs(s: &Stack, gallery: &str) -> BTreeMap<String, Option<i64>> {
    s.all_faces_in(gallery)
        .await
        .iter()
        .map(|f| {
            (
                f.get_str("_id").expect("id").to_string(),
                f.get_i64("person_run").ok(),
            )
        })
        .collect()
}

/// Asserts that the committed run of `gallery` came from the summary path: old faces still
/// carry run `old`'s `person_run` (only the new faces were written) and every face's person id
/// is the committed run's.
async fn assert_only_new_faces_written(s: &Stack, gallery: &str, run: &Value, old: &Value) {
    let want = assignment(run);
    let old_faces = assignment(old);
    let (n, o) = (run["run_number"].as_i64(), old["run_number"].as_i64());
    for f in s.all_faces_in(gallery).await {
        let id = f.get_str("_id").expect("id");
        let got = f.get_str("person_id").ok().map(str::to_string);
        assert_eq!(Some(&got), want.get(id), "person id of {id}");
        let expected_run = if old_faces.contains_key(id) { o } else { n };
        assert_eq!(f.get_i64("person_run").ok(), expected_run, "{id}");
    }
}

/// (a) An incremental job with person summaries files the new faces as today's full-read
/// `assign_new_faces` does, writes person ids on the new faces only, and leaves summaries for
/// the next run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_job_from_summaries_assigns_as_the_full_read() {
    let s = stack("summaries", None).await;
    let (run1, expected) = grouped_then_new_faces(&s, GALLERY).await;
    s.send_job("incremental").await;
    s.drain(1).await;
    let run2 = s.committed_run().await;
    assert_eq!(run2["mode"], "incremental");
    assert_eq!(assignment(&run2), expected);
    assert_eq!(run2["face_count"].as_u64(), Some(expected.len() as u64));
    assert_only_new_faces_written(&s, GALLERY, &run2, &run1).await;
    let state = s.galleries().state(GALLERY).await.expect("state");
    let key = state
        .committed
        .and_then(|c| c.summary_key)
        .expect("summaries");
    assert!(key.ends_with("/summaries/run-0000000002.bin"), "{key}");
    assert_eq!(state.person_ids_run, 2);

    // The next incremental job starts from run 2's summaries: one more face of person 0 joins
    // the same person, and nothing else is rewritten.
    s.add_faces(0, 7, 1).await;
    s.send_job("incremental").await;
    s.drain(2).await;
    let run3 = s.committed_run().await;
    let mut expected3 = expected.clone();
    let person0 = expected[&face(0, 0)].clone();
    expected3.insert(face(0, 7), person0);
    assert_eq!(assignment(&run3), expected3);
    let runs = person_runs(&s, GALLERY).await;
    assert_eq!(runs[&face(0, 7)], Some(3));
    assert_eq!(runs[&face(0, 5)], Some(2));
    assert_eq!(runs[&face(0, 0)], Some(1));
}

/// (b) The summary path reads no old face: with every old face's stored embedding replaced by
/// garbage, an incremental job still files the new faces as the reference does, while a full
/// job, which reads every face, fails on them and commits nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_job_from_summaries_reads_no_old_face() {
    let s = stack("summaries-old", None).await;
    let (run1, expected) = grouped_then_new_faces(&s, GALLERY).await;
    let garbage = Binary {
        subtype: BinarySubtype::Generic,
        bytes: vec![0xff; 3],
    };
    let broken = s
        .faces()
        .update_many(
            doc! {"gallery_id": GALLERY, "person_run": {"$exists": true}},
            doc! {"$set": {"embedding": garbage}},
        )
        .await
        .expect("break old embeddings");
    assert_eq!(broken.modified_count, 27, "every face of run 1");

    s.send_job("incremental").await;
    s.drain(1).await;
    let run2 = s.committed_run().await;
    assert_eq!(assignment(&run2), expected);
    assert_only_new_faces_written(&s, GALLERY, &run2, &run1).await;

    // A full job reads the broken embeddings: it fails for good and the run stays.
    s.send_job("full").await;
    s.run_worker(2).await;
    let after = s.committed_run().await;
    assert_eq!(after["run_number"], run2["run_number"]);
}

/// (c) Without usable summaries an incremental job reads every face, with today's result:
/// the summary object deleted, replaced by one made for another run, or the committed run's
/// person ids not all written (its job died after the commit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_job_without_usable_summaries_reads_every_face() {
    let s = stack("summaries-fallback", None).await;
    let cases = ["missing", "stale", "unwritten"];
    let mut scenes = Vec::new();
    for g in cases {
        scenes.push(grouped_then_new_faces(&s, g).await);
    }
    let summary_key = |g: &str| facegroup_worker::summaries::summary_key("groups/", g, 1);
    s.s3.delete_object()
        .bucket(&s.bucket)
        .key(summary_key("missing"))
        .send()
        .await
        .expect("delete summaries");
    let bytes = s.bytes(&summary_key("stale")).await;
    let (mut header, summaries) =
        facegroup_worker::summaries::decode(&bytes).expect("decode summaries");
    header.run_number = 7;
    let stale = facegroup_worker::summaries::encode(&header, &summaries).expect("encode");
    s.upload(&summary_key("stale"), stale).await;
    s.db.database("huemn")
        .collection::<Document>("galleries")
        .update_one(
            doc! {"_id": "unwritten"},
            doc! {"$set": {"grouping.person_ids_run": 0_i64}},
        )
        .await
        .expect("unmark person ids");

    for (i, (g, (_, expected))) in cases.iter().zip(&scenes).enumerate() {
        s.send(&s.queue, json!({"gallery_id": g, "mode": "incremental"}))
            .await;
        s.drain(1 + i).await;
        let run2 = s.committed_run_in(g).await;
        assert_eq!(&assignment(&run2), expected, "{g}");
        // The full read writes every face's person id again.
        assert_all_faces_written_in(&s, g, &run2).await;
        let state = s.galleries().state(g).await.expect("state");
        assert!(
            state.committed.and_then(|c| c.summary_key).is_some(),
            "{g}: new summaries"
        );
    }
}
