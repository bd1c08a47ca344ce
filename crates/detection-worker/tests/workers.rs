//! The worker binaries against real servers (moto for SQS + S3, SecantusDB for MongoDB), real
//! models and real photos: end to end, and the at-least-once guarantees under crashes at every
//! write step, redelivery, bad and poison input, a broken runtime, a MongoDB outage and
//! SIGTERM. The crash, poison and runtime faults come from the `testing` feature's hooks
//! (`facegroup_worker::fault`), which this package's dev-dependency enables.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mongodb::bson::{doc, Document};
use serde_json::{json, Value};

use facegroup_testkit::{
    create_queue, free_port, image_bytes, models_dir, queue_counts, repo_root, start_mongo,
    start_mongo_on, start_moto, wait_exit, wait_for, CrashRun, Server, TempDir, TestStack,
    WorkerTiming, REFERENCE,
};
use facegroup_worker::mongo::{decode_embedding, image_key};

const GALLERY: &str = "g1";

/// This file's stack: the test kit's, plus the detection-specific helpers below.
struct Stack(TestStack);

impl std::ops::Deref for Stack {
    type Target = TestStack;
    fn deref(&self) -> &TestStack {
        &self.0
    }
}

impl std::ops::DerefMut for Stack {
    fn deref_mut(&mut self) -> &mut TestStack {
        &mut self.0
    }
}

async fn stack(test: &str) -> Stack {
    stack_with_mongo(test, start_mongo()).await
}

async fn stack_with_mongo(test: &str, mongo: Server) -> Stack {
    let logs = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("worker-logs");
    Stack(
        TestStack::start(
            facegroup_worker::aws::loader(),
            start_moto(),
            mongo,
            &logs,
            test,
        )
        .await,
    )
}

/// Detection workers run one single-threaded pipeline with a short visibility timeout, so
/// redeliveries come within seconds.
const TIMING: WorkerTiming = WorkerTiming {
    visibility: 4,
    heartbeat: 1,
    idle_exit: 2,
};

impl Stack {
    async fn upload_photo(&self, name: &str) -> String {
        let bytes = image_bytes(name);
        let key = format!("uploads/{name}");
        self.upload(&key, bytes).await;
        key
    }

    async fn send_detection(&self, queue: &str, image_id: &str, key: &str) {
        self.send_detection_to(queue, GALLERY, image_id, key).await;
    }

    async fn send_detection_to(&self, queue: &str, gallery: &str, image_id: &str, key: &str) {
        self.send(
            queue,
            json!({"image_id": image_id, "gallery_id": gallery, "bucket": self.bucket, "key": key,
                   "metadata": {"uploader": "tests"}}),
        )
        .await;
    }

    /// Starts a worker binary with drain/visibility settings suited to tests.
    fn worker(&self, kind: &str, queue: &str, extra: &[(&str, &str)]) -> Child {
        self.worker_tagged(kind, kind, queue, extra)
    }

    /// [`worker`](Self::worker) with its own log file `TEST.TAG.log`, for several at once.
    fn worker_tagged(&self, kind: &str, tag: &str, queue: &str, extra: &[(&str, &str)]) -> Child {
        let models = models_dir();
        let mut env = model_env(&models);
        env.extend_from_slice(extra);
        self.0
            .worker(&worker_binary(kind), tag, queue, TIMING, &env)
    }

    fn images(&self) -> mongodb::Collection<Document> {
        self.db.database("huemn").collection("images")
    }

    fn faces(&self) -> mongodb::Collection<Document> {
        self.db.database("gallery_images").collection("faces")
    }

    async fn image(&self, id: &str) -> Option<Document> {
        self.image_in(GALLERY, id).await
    }

    async fn image_in(&self, gallery: &str, id: &str) -> Option<Document> {
        self.images()
            .find_one(doc! {"_id": image_key(gallery, id)})
            .await
            .expect("find image")
    }

    async fn status(&self, id: &str) -> Option<String> {
        self.image(id)
            .await
            .and_then(|d| d.get_str("status").ok().map(str::to_string))
    }

    /// Images done so far (0 while MongoDB is unreachable).
    async fn done_count(&self) -> u64 {
        self.images()
            .count_documents(doc! {"status": "done"})
            .await
            .unwrap_or(0)
    }

    async fn faces_of(&self, image_id: &str) -> Vec<Document> {
        self.faces_in(GALLERY, image_id).await
    }

    async fn faces_in(&self, gallery: &str, image_id: &str) -> Vec<Document> {
        let filter = doc! {"gallery_id": gallery, "image_id": image_key(gallery, image_id)};
        self.find("gallery_images", "faces", filter).await
    }
}

/// The worker binaries: this package's own, and the grouping worker's next to it (built on
/// demand when only this package's tests were asked for).
/// The models a detection worker loads from `models` (one single-threaded pipeline).
fn model_env(models: &std::path::Path) -> Vec<(&'static str, &str)> {
    vec![
        (
            "FACEGROUP_MODELS_DIR",
            models.to_str().expect("utf-8 models path"),
        ),
        ("FACEGROUP_INTRA_THREADS", "1"),
    ]
}

fn worker_binary(kind: &str) -> PathBuf {
    let detection = PathBuf::from(env!("CARGO_BIN_EXE_facegroup-detection-worker"));
    if kind == "detection" {
        return detection;
    }
    // Cargo only builds this package's binaries for its tests. `cargo test --workspace` (what
    // scripts/test.sh runs) builds the grouping worker in the same invocation for its own tests,
    // so it is fresh; only when it is missing (this package tested alone on a clean target) is it
    // built here. A nested `cargo build` from inside a test does not share the outer build's
    // fingerprints and recompiled the AWS SDK and mongodb every time.
    let other = detection.with_file_name(format!("facegroup-{kind}-worker"));
    if !other.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(repo_root())
            .args(["build", "-p", &format!("facegroup-{kind}-worker")])
            .status()
            .expect("cargo build");
        assert!(status.success(), "building the {kind} worker failed");
    }
    other
}

fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

/// Asserts the image is done and its stored faces are exactly indices 0..face_count.
/// `(image id, JPEG bytes)`: each sample photo, its mirror image, and half-size copies of the
/// four single-face portraits.
fn sample_photo_variants() -> Vec<(String, Vec<u8>)> {
    let names = [
        "obama", "obama2", "obama3", "biden", "yaoming", "t1", "players", "gdp",
    ];
    let mut out = Vec::new();
    for name in names {
        let bytes = image_bytes(&format!("{name}.jpg"));
        let img = image::load_from_memory(&bytes).expect("decode sample photo");
        out.push((format!("{name}-mirror"), jpeg(&img.fliph())));
        if ["obama", "obama2", "obama3", "biden"].contains(&name) {
            let small = img.resize(
                img.width() / 2,
                img.height() / 2,
                image::imageops::FilterType::Triangle,
            );
            out.push((format!("{name}-small"), jpeg(&small)));
        }
        out.push((name.to_string(), bytes));
    }
    out
}

fn jpeg(img: &image::DynamicImage) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    img.to_rgb8()
        .write_to(&mut buf, image::ImageFormat::Jpeg)
        .expect("encode JPEG");
    buf.into_inner()
}

async fn assert_done_without_duplicates(s: &Stack, image_id: &str) -> usize {
    assert_done_without_duplicates_in(s, GALLERY, image_id).await
}

async fn assert_done_without_duplicates_in(s: &Stack, gallery: &str, image_id: &str) -> usize {
    let img = s.image_in(gallery, image_id).await.expect("image document");
    assert_eq!(img.get_str("status"), Ok("done"), "{image_id}: {img}");
    let count = img.get_i32("face_count").expect("face_count") as usize;
    let faces = s.faces_in(gallery, image_id).await;
    let indices: BTreeSet<i32> = faces
        .iter()
        .map(|f| f.get_i32("face_index").expect("face_index"))
        .collect();
    assert_eq!(faces.len(), count, "{image_id}: duplicate or missing faces");
    assert_eq!(indices, (0..count as i32).collect(), "{image_id}");
    count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_photos_to_persons() {
    let s = stack("e2e").await;
    let (queue, _) = create_queue(&s.sqs, "detect", 30, Some(5)).await;
    let (group_queue, _) = create_queue(&s.sqs, "group", 30, Some(5)).await;
    // 20 real photos: the 8 sample photos, a mirrored copy of each (another photo of the same
    // people, as ArcFace sees it) and half-size copies of four portraits.
    let photos = sample_photo_variants();
    assert_eq!(photos.len(), 20);
    for (id, bytes) in &photos {
        let key = format!("uploads/{id}.jpg");
        s.upload(&key, bytes.clone()).await;
        s.send_detection(&queue, id, &key).await;
    }

    let mut det = s.worker(
        "detection",
        &queue,
        &[
            ("FACEGROUP_DRAIN", "true"),
            ("FACEGROUP_GROUPING_QUEUE_URL", &group_queue),
            ("FACEGROUP_GROUP_AFTER_FACES", "1"),
            ("AWS_SECRET_ACCESS_KEY", LOG_SECRET),
        ],
    );
    let status = wait_exit(&mut det, Duration::from_secs(300)).await;
    assert_eq!(status.code(), Some(0), "drained detection worker exits 0");

    let mut total = 0;
    for (p, _) in &photos {
        let id = p.as_str();
        let n = assert_done_without_duplicates(&s, id).await;
        assert!(n >= 1, "{p}: no face found");
        total += n;
        let doc = s.json(&format!("faces/{GALLERY}/{id}.json")).await;
        assert_eq!(
            doc["faces"].as_array().map(Vec::len),
            Some(n),
            "{p} faces JSON"
        );
        let img = s.image(id).await.expect("image");
        assert_eq!(
            img.get_document("metadata")
                .and_then(|m| m.get_str("uploader")),
            Ok("tests")
        );
        let face = &s.faces_of(id).await[0];
        let emb = face
            .get_binary_generic("embedding")
            .expect("binary embedding");
        assert_eq!(emb.len(), 512 * 4);
    }
    assert_eq!(queue_counts(&s.sqs, &queue).await, (0, 0));
    // Debounced: many faces arrived, one grouping job is pending for the gallery.
    assert_eq!(queue_counts(&s.sqs, &group_queue).await, (1, 0));

    let grouping_env = [
        ("FACEGROUP_DRAIN", "true"),
        ("AWS_SECRET_ACCESS_KEY", LOG_SECRET),
    ];
    let mut grp = s.worker("grouping", &group_queue, &grouping_env);
    let status = wait_exit(&mut grp, Duration::from_secs(120)).await;
    assert_eq!(status.code(), Some(0));
    assert_eq!(queue_counts(&s.sqs, &group_queue).await, (0, 0));

    let latest = s.json(&format!("groups/{GALLERY}/latest.json")).await;
    let run = s.json(latest["key"].as_str().expect("latest key")).await;
    assert_eq!(run["face_count"].as_u64(), Some(total as u64));
    // person id -> images of its faces
    let mut person_images: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for p in run["persons"].as_array().expect("persons") {
        let pid = p["person_id"].as_str().expect("person id").to_string();
        for f in p["face_ids"].as_array().expect("face ids") {
            // Face ids are `{gallery}/{image}:{model}:{index}`.
            let image = f
                .as_str()
                .and_then(|f| f.split(':').next())
                .and_then(|k| k.strip_prefix(&format!("{GALLERY}/")))
                .expect("face id");
            person_images
                .entry(pid.clone())
                .or_default()
                .insert(image.to_string());
        }
    }
    let obama: Vec<&String> = person_images
        .iter()
        .filter(|(_, imgs)| imgs.contains("obama"))
        .map(|(p, _)| p)
        .collect();
    assert_eq!(
        obama.len(),
        1,
        "obama.jpg's face is in one person: {person_images:?}"
    );
    let obama_imgs = &person_images[obama[0]];
    for img in [
        "obama",
        "obama2",
        "obama3",
        "obama-mirror",
        "obama2-mirror",
        "obama3-mirror",
        "obama-small",
    ] {
        assert!(
            obama_imgs.contains(img),
            "{img} not with obama: {person_images:?}"
        );
    }
    assert!(
        !obama_imgs.iter().any(|i| i.starts_with("biden")),
        "biden merged with obama: {person_images:?}"
    );

    // Person ids were written to the faces.
    for f in s.faces_of("obama2").await {
        if let Ok(pid) = f.get_str("person_id") {
            assert!(person_images.contains_key(pid));
        }
    }
    let obama_face_pids: BTreeSet<String> = s
        .faces_of("obama")
        .await
        .iter()
        .filter_map(|f| f.get_str("person_id").ok().map(str::to_string))
        .collect();
    assert!(obama_face_pids.contains(obama[0].as_str()));

    // A second full run keeps the person ids.
    s.send(&group_queue, json!({"gallery_id": GALLERY, "mode": "full"}))
        .await;
    let mut grp = s.worker("grouping", &group_queue, &grouping_env);
    assert_eq!(
        wait_exit(&mut grp, Duration::from_secs(120)).await.code(),
        Some(0)
    );
    let latest2 = s.json(&format!("groups/{GALLERY}/latest.json")).await;
    assert_ne!(latest2["run_id"], latest["run_id"]);
    let run2 = s.json(latest2["key"].as_str().expect("key")).await;
    assert_eq!(run2["persons"], run["persons"]);

    // What the workers logged carries no face data, no photo and no secret.
    let mut embeddings = Vec::new();
    for (p, _) in &photos {
        for f in s.faces_of(p).await {
            let bytes = f.get_binary_generic("embedding").expect("embedding");
            embeddings.push(decode_embedding(bytes).expect("embedding length"));
        }
    }
    let logs: String = ["detection", "grouping"]
        .iter()
        .map(|tag| std::fs::read_to_string(s.log_path(tag)).expect("log"))
        .collect();
    assert!(logs.contains("image done"), "the logs were read");
    assert_logs_carry_no_face_data(&logs, &embeddings, &photos);
}

/// Each face's thumbnails are in S3 under the keys its document names: the aligned crop is the
/// face the stored embedding came from (embedded again, cosine >= 0.9), the context crop shows
/// the face (the detector finds it there). The same photo as HEIC (heif-enc) gives the same
/// face as the JPEG.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn face_thumbnails_in_s3_show_the_stored_faces() {
    let s = stack("thumbnails").await;
    let (queue, _) = create_queue(&s.sqs, "detect", 30, None).await;
    let scratch = TempDir::new("thumbnails-heic");
    let heic = facegroup_testkit::heif_enc(
        &image_bytes("obama.jpg"),
        &scratch.path().join("obama.heic"),
        &[],
    );
    let jpeg_key = s.upload_photo("obama.jpg").await;
    let t1_key = s.upload_photo("t1.jpg").await;
    s.upload("uploads/obama.heic", heic).await;
    s.send_detection(&queue, "obama", &jpeg_key).await;
    s.send_detection(&queue, "t1", &t1_key).await;
    s.send_detection(&queue, "obama-heic", "uploads/obama.heic")
        .await;
    let mut det = s.worker("detection", &queue, &[("FACEGROUP_DRAIN", "true")]);
    assert_eq!(
        wait_exit(&mut det, Duration::from_secs(180)).await.code(),
        Some(0)
    );

    let mut cfg = facegroup_core::PipelineConfig::with_models(
        &models_dir(),
        "scrfd_500m_bnkps.onnx",
        "w600k_mbf.onnx",
    );
    cfg.runtime.dylib_path = Some(facegroup_testkit::ort_dylib());
    let mut embedder =
        facegroup_core::ArcFace::new(cfg.embedder.clone(), &cfg.runtime).expect("embedder");
    let mut pipeline = facegroup_core::Pipeline::new(&cfg).expect("pipeline");
    let mut stored = BTreeMap::new();
    for image in ["obama", "t1", "obama-heic"] {
        assert_eq!(s.status(image).await.as_deref(), Some("done"), "{image}");
        let faces = s.faces_of(image).await;
        assert_eq!(faces.len(), if image == "t1" { 6 } else { 1 }, "{image}");
        let mut keys = BTreeSet::new();
        for face in &faces {
            let id = face.get_str("_id").expect("face id");
            let embedding = decode_embedding(face.get_binary_generic("embedding").expect("emb"))
                .expect("embedding length");
            let aligned_key = face.get_str("thumbnail_key").expect("thumbnail_key");
            let context_key = face.get_str("context_key").expect("context_key");
            let expected = facegroup_worker::thumbs::keys("thumbnails/", id).expect("keys");
            assert_eq!(
                (aligned_key, context_key),
                (&*expected.aligned, &*expected.context)
            );
            keys.extend([aligned_key.to_string(), context_key.to_string()]);

            let aligned = image::load_from_memory(&s.bytes(aligned_key).await)
                .expect("aligned thumbnail is an image")
                .to_rgb8();
            assert_eq!(aligned.dimensions(), (112, 112), "{id}");
            let again = facegroup_core::FaceEmbedder::embed(&mut embedder, &[&aligned])
                .expect("embed thumbnail")
                .remove(0);
            let c = cos(&again, &embedding);
            assert!(
                c >= 0.9,
                "{id}: thumbnail embeds at cosine {c} to the stored face"
            );

            let context = image::load_from_memory(&s.bytes(context_key).await)
                .expect("context thumbnail is an image")
                .to_rgb8();
            assert!(context.width().max(context.height()) <= 256, "{id}");
            // The context crop is the face box enlarged 1.6x: the face fills most of it.
            let found = pipeline.analyze(&context).expect("analyze context crop");
            assert_eq!(found.len(), 1, "{id}: faces in the context crop");
            let c = cos(&found[0].embedding, &embedding);
            assert!(
                c >= 0.7,
                "{id}: the context crop's face embeds at cosine {c}"
            );
            stored.insert(image, embedding);
        }
        // Exactly the thumbnails the faces name are in the image's folder.
        assert_eq!(
            s.keys(&format!("thumbnails/{GALLERY}/{image}/")).await,
            keys
        );
    }
    let c = cos(&stored["obama"], &stored["obama-heic"]);
    assert!(c >= 0.98, "the HEIC's face against the JPEG's: cosine {c}");
}

fn cos(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The secret access key the end-to-end test gives the workers (moto accepts any).
const LOG_SECRET: &str = "e2e-secret-Zq8vK3pWm1";

/// No secret, no photo bytes (raw or base64) and no embedding (no stored value, no long run of
/// numbers) in `logs`.
fn assert_logs_carry_no_face_data(
    logs: &str,
    embeddings: &[Vec<f32>],
    photos: &[(String, Vec<u8>)],
) {
    assert!(!logs.contains(LOG_SECRET), "the AWS secret key was logged");
    for marker in ["JFIF", "Exif", "/9j/", "\\u00ff\\u00d8", "ffd8ff"] {
        assert!(!logs.contains(marker), "photo bytes ({marker}) logged");
    }
    for (id, bytes) in photos {
        let head = String::from_utf8_lossy(&bytes[..64.min(bytes.len())]).into_owned();
        assert!(!logs.contains(&head), "{id}: photo bytes logged");
    }
    let mut checked = 0;
    for e in embeddings {
        for v in e {
            // Short renderings (0.5, -1) could occur in any log line by chance.
            let text = v.to_string();
            if text.len() >= 8 {
                assert!(!logs.contains(&text), "embedding value {text} logged");
                checked += 1;
            }
        }
    }
    assert!(checked > 1000, "only {checked} embedding values checked");
    // Nor any other vector: no run of 16 or more numbers in a row.
    let longest = logs
        .split(|c: char| !(c.is_ascii_digit() || ".-+eE, ".contains(c)))
        .map(|run| {
            run.split(',')
                .filter(|n| n.trim().parse::<f64>().is_ok())
                .count()
        })
        .max()
        .unwrap_or(0);
    assert!(longest < 16, "a run of {longest} numbers logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_and_bad_input_are_handled() {
    let s = stack("dup").await;
    let (queue, dlq) = create_queue(&s.sqs, "detect", 30, Some(3)).await;
    let key = s.upload_photo("obama.jpg").await;
    // The same message twice.
    s.send_detection(&queue, "twice", &key).await;
    s.send_detection(&queue, "twice", &key).await;
    // A truncated JPEG, a missing object, a message missing its key.
    let mut corrupt = image_bytes("biden.jpg");
    corrupt.truncate(300);
    s.upload("uploads/corrupt.jpg", corrupt).await;
    s.send_detection(&queue, "corrupt", "uploads/corrupt.jpg")
        .await;
    s.send_detection(&queue, "missing", "uploads/nope.jpg")
        .await;
    s.send(
        &queue,
        json!({"image_id": "nokey", "gallery_id": GALLERY, "bucket": s.bucket}),
    )
    .await;

    let mut w = s.worker("detection", &queue, &[("FACEGROUP_DRAIN", "true")]);
    assert_eq!(
        wait_exit(&mut w, Duration::from_secs(180)).await.code(),
        Some(0)
    );

    let n = assert_done_without_duplicates(&s, "twice").await;
    assert!(n >= 1);
    assert_eq!(
        s.image("twice")
            .await
            .and_then(|d| d.get_i32("attempts").ok()),
        Some(2)
    );
    for (id, needle) in [
        ("corrupt", "corrupt"),
        ("missing", "does not exist"),
        ("nokey", "key"),
    ] {
        let img = s.image(id).await.unwrap_or_else(|| panic!("{id} recorded"));
        assert_eq!(img.get_str("status"), Ok("failed"), "{id}");
        let failure = img.get_document("failure").expect("failure");
        assert_eq!(failure.get_str("class"), Ok("permanent"), "{id}");
        let reason = failure.get_str("reason").expect("reason");
        assert!(reason.contains(needle), "{id}: {reason}");
        assert!(s.faces_of(id).await.is_empty());
    }
    // Everything settled: nothing left, nothing dead-lettered.
    assert_eq!(queue_counts(&s.sqs, &queue).await, (0, 0));
    let dlq = dlq.expect("dlq");
    assert_eq!(queue_counts(&s.sqs, &dlq).await, (0, 0));

    // A late duplicate of the finished image is acknowledged without redoing it: the status
    // document is not touched (no pending flip, same attempts and completion time).
    let before = s.image("twice").await.expect("twice");
    let faces_before = s.faces_of("twice").await;
    s.send_detection(&queue, "twice", &key).await;
    let mut w = s.worker("detection", &queue, &[("FACEGROUP_DRAIN", "true")]);
    assert_eq!(
        wait_exit(&mut w, Duration::from_secs(180)).await.code(),
        Some(0)
    );
    assert_eq!(s.image("twice").await.expect("twice"), before);
    assert_eq!(s.faces_of("twice").await, faces_before);
    assert_eq!(queue_counts(&s.sqs, &queue).await, (0, 0));
    assert_eq!(queue_counts(&s.sqs, &dlq).await, (0, 0));
}

/// Every step of a detection job at which the fault hook can abort the worker: before and
/// after each MongoDB/S3 write, and before the delete.
const CRASH_STEPS: [&str; 9] = [
    "after_begin",
    "after_put_thumbnails",
    "after_replace_faces",
    "after_put_json",
    "before_grouping_claim",
    "after_grouping_claim",
    "after_grouping_send",
    "after_mark_done",
    "before_delete",
];

/// What a finished detection of one image leaves behind, for comparing runs: the status and
/// face count, each face's index, score and embedding, the faces JSON's face count, and the
/// gallery's grouping trigger (faces counted, a grouping job claimed).
async fn end_state(s: &Stack, gallery: &str, image_id: &str) -> Value {
    let img = s.image_in(gallery, image_id).await.expect("image document");
    let mut faces: Vec<Value> = s
        .faces_in(gallery, image_id)
        .await
        .iter()
        .map(|f| {
            json!({
                "face_index": f.get_i32("face_index").expect("face_index"),
                "det_score": f.get_f64("det_score").expect("det_score"),
                "embedding": f.get_binary_generic("embedding").expect("embedding"),
                "model_version": f.get_str("model_version").expect("model_version"),
                "thumbnail_key": f.get_str("thumbnail_key").expect("thumbnail_key"),
                "context_key": f.get_str("context_key").expect("context_key"),
            })
        })
        .collect();
    faces.sort_by_key(|f| f["face_index"].as_i64());
    let gallery_doc =
        s.db.database("huemn")
            .collection::<Document>("galleries")
            .find_one(doc! {"_id": gallery})
            .await
            .expect("find gallery")
            .expect("gallery document");
    let counted: i64 = gallery_doc
        .get_document("new_faces")
        .map(|d| d.values().filter_map(|v| v.as_i64()).sum())
        .unwrap_or(-1);
    let json_faces = s.json(&format!("faces/{gallery}/{image_id}.json")).await["faces"]
        .as_array()
        .map(Vec::len);
    // Keys are per gallery, so compared by their names within it.
    let thumbnails: Vec<String> = s
        .keys(&format!("thumbnails/{gallery}/{image_id}/"))
        .await
        .into_iter()
        .filter_map(|k| k.rsplit('/').next().map(str::to_string))
        .collect();
    for f in faces.iter_mut() {
        for k in ["thumbnail_key", "context_key"] {
            let key = f[k].as_str().unwrap_or_default();
            assert!(
                key.starts_with(&format!("thumbnails/{gallery}/{image_id}/")),
                "{key}"
            );
            f[k] = json!(key.rsplit('/').next());
        }
    }
    json!({
        "status": img.get_str("status").ok(),
        "thumbnails": thumbnails,
        "face_count": img.get_i32("face_count").ok(),
        "model_version": img.get_str("model_version").ok(),
        "faces": faces,
        "faces_json": json_faces,
        "counted": counted,
        "grouping_claimed": gallery_doc.get_str("pending_by").ok(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_every_step_then_a_rerun_ends_as_an_uninterrupted_run() {
    let s = stack("crash").await;
    let key = s.upload_photo("players.jpg").await;
    let image = "players";
    let settings = [
        ("FACEGROUP_GROUP_AFTER_FACES", "1"),
        ("FACEGROUP_MAX_IN_FLIGHT", "1"),
    ];
    // One gallery, queue and grouping queue per run: the reference run and one per step, all
    // at once (the crashed runs first, then their reruns).
    let mut runs = Vec::new();
    for (i, step) in std::iter::once(REFERENCE).chain(CRASH_STEPS).enumerate() {
        let gallery = format!("crash-{i}");
        let (queue, _) = create_queue(&s.sqs, &format!("detect-{i}"), 30, None).await;
        let (group_queue, _) = create_queue(&s.sqs, &format!("group-{i}"), 30, None).await;
        s.send_detection_to(&queue, &gallery, image, &key).await;
        runs.push((step, gallery, queue, group_queue));
    }
    let models = models_dir();
    let matrix: Vec<CrashRun> = runs
        .iter()
        .map(|(step, _, queue, group_queue)| {
            let mut env = model_env(&models);
            env.extend_from_slice(&settings);
            env.push(("FACEGROUP_GROUPING_QUEUE_URL", group_queue));
            CrashRun { step, queue, env }
        })
        .collect();
    // Reruns drain with an idle time longer than the crashed worker's visibility (4 s), so
    // they wait for the message to come back.
    s.crash_then_rerun(&worker_binary("detection"), TIMING, &matrix, 10)
        .await;

    let (_, ref_gallery, ref_queue, ref_group) = &runs[0];
    let reference = end_state(&s, ref_gallery, image).await;
    assert!(
        assert_done_without_duplicates_in(&s, ref_gallery, image).await > 1,
        "players.jpg has several faces"
    );
    assert_eq!(reference["grouping_claimed"], json!(image));
    assert_eq!(queue_counts(&s.sqs, ref_queue).await, (0, 0));
    assert_eq!(queue_counts(&s.sqs, ref_group).await, (1, 0));
    for (step, gallery, queue, group_queue) in &runs[1..] {
        assert_done_without_duplicates_in(&s, gallery, image).await;
        assert_eq!(
            end_state(&s, gallery, image).await,
            reference,
            "crash {step}"
        );
        assert_eq!(queue_counts(&s.sqs, queue).await, (0, 0), "crash {step}");
        // At least once: a crash after the send may send the grouping job twice.
        let (grouping_jobs, _) = queue_counts(&s.sqs, group_queue).await;
        assert!(
            (1..=2).contains(&grouping_jobs),
            "crash {step}: {grouping_jobs} grouping jobs"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongodb_outage_loses_no_message() {
    let storage = TempDir::new("outage");
    let storage_path = storage.path().join("db");
    let storage_path = storage_path.to_str().expect("utf8 path").to_string();
    let port = free_port();
    let s = stack_with_mongo("outage", start_mongo_on(port, &storage_path)).await;
    // maxReceiveCount 3: released on every failure, as before the breaker, each message would
    // be dead-lettered within seconds of a MongoDB outage.
    let (queue, dlq) = create_queue(&s.sqs, "detect", 30, Some(3)).await;
    let photos = [
        "obama.jpg",
        "obama2.jpg",
        "obama3.jpg",
        "biden.jpg",
        "yaoming.jpg",
        "t1.jpg",
    ];
    for p in photos {
        let key = s.upload_photo(p).await;
        s.send_detection(&queue, p.trim_end_matches(".jpg"), &key)
            .await;
    }
    // MongoDB calls fail after 1 s without a server (not the tests' usual 60 s), so the outage
    // shows as failing jobs, not as jobs that merely wait.
    let fast_fail =
        format!("mongodb://127.0.0.1:{port}/?directConnection=true&serverSelectionTimeoutMS=1000");
    let mut w = s.worker(
        "detection",
        &queue,
        &[
            ("FACEGROUP_MAX_IN_FLIGHT", "2"),
            ("FACEGROUP_MONGODB_URI", &fast_fail),
        ],
    );
    wait_for("first image done", Duration::from_secs(120), || async {
        s.done_count().await >= 1
    })
    .await;

    // Take MongoDB away for longer than three visibility windows (3 x 4 s) with messages in
    // flight, then bring it back with the same data.
    let mut s = s;
    s.mongo.terminate();
    eprintln!("mongodb stopped");
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert_eq!(
        queue_counts(&s.sqs, dlq.as_deref().expect("dlq")).await,
        (0, 0),
        "nothing dead-lettered during the outage"
    );
    s.mongo = start_mongo_on(port, &storage_path);
    eprintln!("mongodb restarted");

    wait_for("every image done", Duration::from_secs(150), || async {
        s.done_count().await == photos.len() as u64
    })
    .await;
    signal(&w, "-TERM");
    assert_eq!(
        wait_exit(&mut w, Duration::from_secs(60)).await.code(),
        Some(0)
    );
    for p in photos {
        assert_done_without_duplicates(&s, p.trim_end_matches(".jpg")).await;
    }
    assert_eq!(queue_counts(&s.sqs, &queue).await, (0, 0));
    assert_eq!(queue_counts(&s.sqs, &dlq.expect("dlq")).await, (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_image_is_failed_and_the_worker_keeps_serving() {
    let s = stack("poison").await;
    let (queue, dlq) = create_queue(&s.sqs, "detect", 30, Some(2)).await;
    let key = s.upload_photo("obama.jpg").await;
    for id in ["before", "poison", "after"] {
        s.send_detection(&queue, id, &key).await;
    }
    let mut w = s.worker(
        "detection",
        &queue,
        &[
            ("FACEGROUP_DRAIN", "true"),
            ("FACEGROUP_MAX_IN_FLIGHT", "1"),
            ("FACEGROUP_TEST_FAIL_INFERENCE", "poison"),
        ],
    );
    let status = wait_exit(&mut w, Duration::from_secs(180)).await;
    assert_eq!(
        status.code(),
        Some(0),
        "a poison image is no runtime failure"
    );
    let img = s.image("poison").await.expect("poison recorded");
    assert_eq!(img.get_str("status"), Ok("failed"));
    let failure = img.get_document("failure").expect("failure");
    assert_eq!(failure.get_str("class"), Ok("permanent"));
    assert!(
        failure
            .get_str("reason")
            .unwrap_or_default()
            .contains("inference"),
        "{failure}"
    );
    assert!(s.faces_of("poison").await.is_empty());
    // The same image under other ids: the worker served them before and after.
    assert!(assert_done_without_duplicates(&s, "before").await >= 1);
    assert!(assert_done_without_duplicates(&s, "after").await >= 1);
    assert_eq!(queue_counts(&s.sqs, &queue).await, (0, 0));
    assert_eq!(queue_counts(&s.sqs, &dlq.expect("dlq")).await, (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_broken_mid_job_exits_3_and_releases_the_messages() {
    let s = stack("runtime").await;
    let (queue, _) = create_queue(&s.sqs, "detect", 600, None).await;
    let key = s.upload_photo("obama.jpg").await;
    s.send_detection(&queue, "first", &key).await;
    let mut w = s.worker(
        "detection",
        &queue,
        &[
            ("FACEGROUP_MAX_IN_FLIGHT", "1"),
            ("FACEGROUP_VISIBILITY_SECS", "600"),
            ("FACEGROUP_HEARTBEAT_SECS", "60"),
            // From this image on, inference and the probe fail: a GPU lost mid-run.
            ("FACEGROUP_TEST_BREAK_RUNTIME", "breaks"),
        ],
    );
    wait_for("first image done", Duration::from_secs(120), || async {
        s.status("first").await.as_deref() == Some("done")
    })
    .await;
    s.send_detection(&queue, "breaks", &key).await;
    s.send_detection(&queue, "waiting", &key).await;
    let status = wait_exit(&mut w, Duration::from_secs(120)).await;
    assert_eq!(status.code(), Some(3), "GPU/runtime failure");
    // The job had started; it is not blamed on the image, and its message is visible again at
    // once (10-minute visibility otherwise), with the one never received.
    assert_eq!(s.status("breaks").await.as_deref(), Some("pending"));
    assert_eq!(queue_counts(&s.sqs, &queue).await, (2, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_or_releases_every_message() {
    let s = stack("sigterm").await;
    // A 10-minute visibility: a message not released explicitly would stay hidden.
    let (queue, _) = create_queue(&s.sqs, "detect", 600, None).await;
    let key = s.upload_photo("players.jpg").await;
    let total = 12;
    for i in 0..total {
        s.send_detection(&queue, &format!("p{i}"), &key).await;
    }
    let mut w = s.worker(
        "detection",
        &queue,
        &[
            ("FACEGROUP_MAX_IN_FLIGHT", "10"),
            ("FACEGROUP_GRACE_PERIOD_SECS", "1"),
            ("FACEGROUP_VISIBILITY_SECS", "600"),
            ("FACEGROUP_HEARTBEAT_SECS", "60"),
        ],
    );
    wait_for("first image done", Duration::from_secs(120), || async {
        s.done_count().await >= 1
    })
    .await;
    signal(&w, "-TERM");
    let status = wait_exit(&mut w, Duration::from_secs(60)).await;
    assert_eq!(status.code(), Some(0), "SIGTERM handled: exit 0");

    let done = s
        .images()
        .count_documents(doc! {"status": "done"})
        .await
        .expect("count");
    let (visible, hidden) = queue_counts(&s.sqs, &queue).await;
    eprintln!("done {done}, released {visible}");
    // Nothing is stuck invisible: every message was either finished (and deleted) or released.
    assert_eq!(hidden, 0);
    assert_eq!(done + visible, total);
    assert!(
        visible > 0,
        "one pipeline cannot finish 10 jobs in a 1 s grace period"
    );
}

#[tokio::test]
async fn exit_codes_follow_the_contract() {
    let bin = worker_binary("detection");
    let run = |envs: &[(&str, &str)]| {
        let mut cmd = Command::new(&bin);
        cmd.current_dir(repo_root())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Ok(ort) = std::env::var("ORT_DYLIB_PATH") {
            cmd.env("ORT_DYLIB_PATH", ort);
        }
        for (k, v) in envs {
            cmd.env(k, v);
        }
        cmd.status().expect("run worker").code()
    };
    let base = [
        ("FACEGROUP_QUEUE_URL", "http://127.0.0.1:1/1/q"),
        ("FACEGROUP_BUCKET", "b"),
        ("FACEGROUP_MONGODB_URI", "mongodb://127.0.0.1:1"),
    ];
    // Missing required setting.
    assert_eq!(run(&base[..2]), Some(2));
    // Invalid value.
    let mut bad = base.to_vec();
    bad.push(("FACEGROUP_WAIT_TIME_SECS", "60"));
    assert_eq!(run(&bad), Some(2));
    // Missing model.
    let mut nomodel = base.to_vec();
    nomodel.push(("FACEGROUP_MODELS_DIR", "/nonexistent"));
    assert_eq!(run(&nomodel), Some(2));
    // CUDA requested on this CPU-only runtime: the provider cannot start -> retry elsewhere.
    let mut cuda = base.to_vec();
    cuda.push(("FACEGROUP_PROVIDER", "cuda"));
    assert_eq!(run(&cuda), Some(3));

    // `--help` shows no secret-bearing environment value.
    let help = Command::new(&bin)
        .arg("--help")
        .env(
            "FACEGROUP_MONGODB_URI",
            "mongodb://app:hunter2@db.example:27017",
        )
        .output()
        .expect("run --help");
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("FACEGROUP_MONGODB_URI"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detection_racing_a_deletion_ends_deleted() {
    let s = stack("race").await;
    let (queue, _) = create_queue(&s.sqs, "detect", 30, Some(5)).await;
    let (group_queue, _) = create_queue(&s.sqs, "group", 30, Some(5)).await;
    let key = s.upload_photo("obama.jpg").await;
    s.send_detection(&queue, "racer", &key).await;
    // The detection stops after writing faces and result JSON, before its last write (the
    // status): the deletion runs exactly then.
    let pause = TempDir::new("race-pause");
    let dir = pause.path().to_str().expect("utf8 path").to_string();
    let mut det = s.worker(
        "detection",
        &queue,
        &[
            ("FACEGROUP_DRAIN", "true"),
            ("FACEGROUP_TEST_PAUSE_AT", "before_mark_done"),
            ("FACEGROUP_TEST_PAUSE_DIR", &dir),
        ],
    );
    let reached = pause.path().join("before_mark_done.reached");
    wait_for(
        "detection at its last write",
        Duration::from_secs(120),
        || {
            let r = reached.clone();
            async move { r.exists() }
        },
    )
    .await;
    assert!(!s.faces_of("racer").await.is_empty(), "faces written");
    s.json(&format!("faces/{GALLERY}/racer.json")).await;

    let deletion =
        json!({"type": "delete", "scope": "image", "gallery_id": GALLERY, "image_id": "racer"});
    s.send(&group_queue, deletion).await;
    let mut grp = s.worker("grouping", &group_queue, &[("FACEGROUP_DRAIN", "true")]);
    assert_eq!(
        wait_exit(&mut grp, Duration::from_secs(120)).await.code(),
        Some(0)
    );
    std::fs::write(pause.path().join("before_mark_done.go"), b"").expect("resume");
    assert_eq!(
        wait_exit(&mut det, Duration::from_secs(120)).await.code(),
        Some(0)
    );
    assert_only_tombstone_left(&s, "racer", &key).await;

    // A late redelivery of the detection is dropped: still deleted.
    s.send_detection(&queue, "racer", &key).await;
    let mut det = s.worker("detection", &queue, &[("FACEGROUP_DRAIN", "true")]);
    assert_eq!(
        wait_exit(&mut det, Duration::from_secs(120)).await.code(),
        Some(0)
    );
    assert_only_tombstone_left(&s, "racer", &key).await;
    assert_eq!(queue_counts(&s.sqs, &queue).await, (0, 0));
    assert_eq!(queue_counts(&s.sqs, &group_queue).await, (0, 0));
}

/// The image's tombstone is all there is of it: no face, and no object but the upload.
async fn assert_only_tombstone_left(s: &Stack, image_id: &str, upload: &str) {
    let img = s.image(image_id).await.expect("tombstone");
    assert_eq!(img.get_str("status"), Ok("deleted"), "{img}");
    let fields: BTreeSet<&str> = img.keys().map(String::as_str).collect();
    assert_eq!(
        fields,
        BTreeSet::from(["_id", "gallery_id", "status", "deleted_at"]),
        "{img}"
    );
    assert_eq!(s.faces().count_documents(doc! {}).await.expect("count"), 0);
    let objects = facegroup_testkit::s3_objects(&s.s3, &s.bucket).await;
    assert_eq!(objects.keys().collect::<Vec<_>>(), [upload]);
}
