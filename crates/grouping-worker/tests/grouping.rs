//! The grouping worker binary against real servers (moto for SQS + S3, SecantusDB for
//! MongoDB), on synthetic faces stored in the shape the detection worker writes: the first
//! grouping of a gallery reads no S3 key that may not exist, concurrent jobs of one gallery end
//! in one committed run, an empty face set keeps the committed run, and a runtime failure mid-job
//! exits 3 and releases the message.
//!
//! The binary is the one cargo builds for these tests: the dev-dependency on
//! `facegroup-worker/testing` compiles its fault hook in; `cargo build` of the binary has none.

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use facegroup_worker::gallery::GalleryStore;
use facegroup_worker::mongo::{encode_embedding, MongoStore};
use futures::TryStreamExt;
use mongodb::bson::{doc, spec::BinarySubtype, Binary, Document};
use serde_json::{json, Value};

use facegroup_testkit::*;

const GALLERY: &str = "g1";
/// The worker's default model version (detector + embedder file stems).
const MODEL_VERSION: &str = "scrfd_500m_bnkps+w600k_mbf";
const DIM: usize = 512;

/// The grouping worker binary cargo built for these tests (with `facegroup-worker/testing`
/// through the dev-dependency, so the fault hooks are in).
fn worker_binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_facegroup-grouping-worker"))
}

/// moto started with request recording into `recording` (a test's own file).
fn start_recording_moto(recording: &Path) -> (Child, u16) {
    let port = free_port();
    let child = Command::new(repo_root().join(".venv/bin/moto_server"))
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .env("MOTO_ENABLE_RECORDING", "True")
        .env("MOTO_RECORDER_FILEPATH", recording)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("moto_server");
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "moto not ready after 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    (child, port)
}

struct Stack {
    /// moto: a support server, or one of this file's recording ones (killed on drop).
    moto_port: u16,
    _moto: Option<Server>,
    recording_moto: Option<Child>,
    mongo: Server,
    sqs: aws_sdk_sqs::Client,
    s3: aws_sdk_s3::Client,
    db: mongodb::Client,
    bucket: String,
    logs: PathBuf,
    queue: String,
    dlq: String,
}

impl Drop for Stack {
    fn drop(&mut self) {
        if let Some(c) = self.recording_moto.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn stack(test: &str, recording: Option<&Path>) -> Stack {
    let (moto_port, moto, recording_moto) = match recording {
        Some(file) => {
            let (child, port) = start_recording_moto(file);
            (port, None, Some(child))
        }
        None => {
            let m = start_moto();
            (m.port, Some(m), None)
        }
    };
    let endpoint = format!("http://127.0.0.1:{moto_port}");
    let conf = facegroup_worker::aws::loader()
        .endpoint_url(&endpoint)
        .region(aws_config::Region::new(REGION))
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "testing", "testing", None, None, "tests",
        ))
        .load()
        .await;
    let sqs = aws_sdk_sqs::Client::new(&conf);
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&conf)
            .force_path_style(true)
            .build(),
    );
    let bucket = "photos".to_string();
    s3.create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("create bucket");
    let mongo = start_mongo();
    let db = mongodb::Client::with_uri_str(mongo_uri(mongo.port))
        .await
        .expect("mongo client");
    let (queue, dlq) = create_queue(&sqs, "group", 30, Some(5)).await;
    let logs = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("grouping-logs");
    std::fs::create_dir_all(&logs).expect("log dir");
    Stack {
        moto_port,
        _moto: moto,
        recording_moto,
        mongo,
        sqs,
        s3,
        db,
        bucket,
        logs: logs.join(test),
        queue,
        dlq: dlq.expect("dlq"),
    }
}

impl Stack {
    /// Starts a grouping worker that drains the queue; `n` names its log file.
    fn worker(&self, n: usize, extra: &[(&str, &str)]) -> Child {
        let log =
            std::fs::File::create(self.logs.with_extension(format!("{n}.log"))).expect("log file");
        let mut cmd = Command::new(worker_binary());
        cmd.current_dir(repo_root())
            .env(
                "AWS_ENDPOINT_URL",
                format!("http://127.0.0.1:{}", self.moto_port),
            )
            .env("AWS_REGION", REGION)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("FACEGROUP_MONGODB_URI", mongo_uri(self.mongo.port))
            .env("FACEGROUP_S3_PATH_STYLE", "true")
            .env("RUST_LOG", "info")
            .env("FACEGROUP_QUEUE_URL", &self.queue)
            .env("FACEGROUP_BUCKET", &self.bucket)
            .env("FACEGROUP_DRAIN", "true")
            .env("FACEGROUP_WAIT_TIME_SECS", "1")
            .env("FACEGROUP_VISIBILITY_SECS", "10")
            .env("FACEGROUP_HEARTBEAT_SECS", "2")
            .env("FACEGROUP_RETRY_BACKOFF_SECS", "1")
            .env("FACEGROUP_IDLE_EXIT_SECS", "4")
            .env("FACEGROUP_LEASE_SECS", "20")
            .env(
                "FACEGROUP_LIVENESS_FILE",
                self.logs.with_extension(format!("{n}.alive")),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in extra {
            cmd.env(k, v);
        }
        cmd.spawn().expect("start grouping worker")
    }

    async fn send_job(&self, mode: &str) {
        self.sqs
            .send_message()
            .queue_url(&self.queue)
            .message_body(json!({"gallery_id": GALLERY, "mode": mode}).to_string())
            .send()
            .await
            .expect("send");
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
        let docs: Vec<Document> = (first..first + count)
            .map(|i| {
                let image_id = format!("p{person}-img{i}");
                let embedding = synthetic_embedding(person, i);
                doc! {
                    "_id": format!("{image_id}:{MODEL_VERSION}:0"),
                    "image_id": &image_id,
                    "gallery_id": GALLERY,
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
        self.faces()
            .find(doc! {"gallery_id": GALLERY})
            .await
            .expect("find")
            .try_collect()
            .await
            .expect("faces")
    }

    async fn s3_json(&self, key: &str) -> Value {
        facegroup_testkit::s3_json(&self.s3, &self.bucket, key).await
    }

    async fn keys(&self, prefix: &str) -> BTreeSet<String> {
        let out = self
            .s3
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .send()
            .await
            .expect("list");
        out.contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_string))
            .collect()
    }

    /// The committed run JSON, by the key MongoDB records.
    async fn committed_run(&self) -> Value {
        let state = self.galleries().state(GALLERY).await.expect("state");
        let committed = state.committed.expect("a committed run");
        let run = self.s3_json(&committed.key).await;
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

/// Asserts every stored face carries the committed run's person id and run number.
async fn assert_faces_match(s: &Stack, run: &Value) {
    let want = assignment(run);
    let faces = s.all_faces().await;
    assert_eq!(
        faces.len(),
        want.len(),
        "the committed run holds every face"
    );
    let run_number = run["run_number"].as_i64().expect("run number");
    for f in &faces {
        let id = f.get_str("_id").expect("id");
        let got = f.get_str("person_id").ok().map(str::to_string);
        assert_eq!(Some(&got), want.get(id), "person id of {id}");
        assert_eq!(
            f.get_i64("person_run").ok(),
            Some(run_number),
            "{id} written by the committed run"
        );
    }
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
    let mut w = s.worker(0, &[]);
    assert_eq!(
        wait_exit(&mut w, Duration::from_secs(180)).await.code(),
        Some(0)
    );

    // Under GetObject-without-ListBucket a read of a missing key is a 403; the first job of a
    // new gallery must not read anything under groups/ at all. (Taken before this test's own
    // reads, which the recording sees too.)
    let gets = recorded_gets(&recording, &s.bucket);
    assert!(gets.is_empty(), "first grouping read {gets:?}");
    let run = s.committed_run().await;
    assert_eq!(run["persons"].as_array().map(Vec::len), Some(3));
    assert_faces_match(&s, &run).await;
    let latest = s.s3_json(&format!("groups/{GALLERY}/latest.json")).await;
    assert_eq!(latest["run_id"], run["run_id"]);

    // The next job reads exactly the committed run, by its key.
    s.add_faces(3, 0, 3).await;
    s.send_job("full").await;
    let before = recorded_gets(&recording, &s.bucket).len();
    let mut w = s.worker(1, &[]);
    assert_eq!(
        wait_exit(&mut w, Duration::from_secs(180)).await.code(),
        Some(0)
    );
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
    let ids = |r: &Value| -> BTreeSet<String> {
        r["persons"]
            .as_array()
            .expect("persons")
            .iter()
            .map(|p| p["person_id"].as_str().expect("id").to_string())
            .collect()
    };
    assert!(
        ids(&run).is_subset(&ids(&run2)),
        "{:?} -> {:?}",
        ids(&run),
        ids(&run2)
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
    let mut w = s.worker(0, &[]);
    assert_eq!(
        wait_exit(&mut w, Duration::from_secs(180)).await.code(),
        Some(0)
    );
    let run = s.committed_run().await;
    let latest_key = format!("groups/{GALLERY}/latest.json");
    let latest = s.s3_json(&latest_key).await;

    // All faces gone (e.g. a model switch not yet re-detected): nothing is committed.
    let saved = s.all_faces().await;
    s.faces().delete_many(doc! {}).await.expect("delete");
    s.send_job("full").await;
    let mut w = s.worker(1, &[]);
    assert_eq!(
        wait_exit(&mut w, Duration::from_secs(180)).await.code(),
        Some(0)
    );
    assert_eq!(s.committed_run().await, run);
    assert_eq!(s.s3_json(&latest_key).await, latest);
    assert_eq!(queue_counts(&s.sqs, &s.dlq).await, (0, 0));

    // The faces come back with a new person: old persons keep their ids, the new one is
    // numbered after them.
    s.faces().insert_many(saved).await.expect("restore");
    s.add_faces(2, 0, 3).await;
    s.send_job("full").await;
    let mut w = s.worker(2, &[]);
    assert_eq!(
        wait_exit(&mut w, Duration::from_secs(180)).await.code(),
        Some(0)
    );
    let run2 = s.committed_run().await;
    assert_faces_match(&s, &run2).await;
    let ids = |r: &Value| -> BTreeSet<String> {
        r["persons"]
            .as_array()
            .expect("persons")
            .iter()
            .map(|p| p["person_id"].as_str().expect("id").to_string())
            .collect()
    };
    assert_eq!(
        ids(&run),
        BTreeSet::from(["person-1".to_string(), "person-2".to_string()])
    );
    assert_eq!(
        ids(&run2),
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
    let mut w = s.worker(1, &[]);
    assert_eq!(
        wait_exit(&mut w, Duration::from_secs(180)).await.code(),
        Some(0)
    );
    assert_eq!(queue_counts(&s.sqs, &s.queue).await, (0, 0));
    let run = s.committed_run().await;
    assert_faces_match(&s, &run).await;
}
