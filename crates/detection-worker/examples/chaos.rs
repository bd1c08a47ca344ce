//! Chaos load for the detection worker (issue 8), not part of CI: N detection messages, two
//! workers on one queue, one of them killed with SIGKILL and restarted every few seconds, and
//! MongoDB stopped and restarted once while messages are in flight. At the end every message
//! must be accounted for (`sent == done + failed`), no face stored twice, and the queue and its
//! dead-letter queue empty.
//!
//! ```sh
//! source .cache/env.sh
//! cargo build -p facegroup-detection-worker --release
//! cargo run -p facegroup-detection-worker --example chaos --release -- \
//!     --worker target/release/facegroup-detection-worker --messages 1000
//! ```
//!
//! It prints one line, `chaos messages=.. done=.. failed=.. duplicate_faces=.. queue=.. dlq=..
//! kills=.. mongo_restarts=.. seconds=..`, and exits 1 when any of the guarantees is broken.
//! Photos are the repo's sample photos (`--photos DIR` for others: every JPEG in it), sent
//! round-robin under distinct image ids.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use facegroup_testkit::{
    create_queue, free_port, images_dir, models_dir, queue_counts, start_mongo_on, start_moto,
    TempDir, TestStack, WorkerTiming,
};
use futures::TryStreamExt;
use mongodb::bson::{doc, Document};
use serde_json::json;

const GALLERY: &str = "chaos";

struct Args {
    worker: PathBuf,
    messages: usize,
    kill_every: Duration,
    photos: PathBuf,
    limit: Duration,
}

fn parse_args() -> Args {
    let mut args = Args {
        worker: PathBuf::from("target/debug/facegroup-detection-worker"),
        messages: 1000,
        kill_every: Duration::from_secs(20),
        photos: images_dir(),
        limit: Duration::from_secs(3600),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--worker" => args.worker = PathBuf::from(value),
            "--messages" => args.messages = value.parse().expect("--messages N"),
            "--kill-every" => {
                args.kill_every = Duration::from_secs(value.parse().expect("--kill-every SECS"))
            }
            "--photos" => args.photos = PathBuf::from(value),
            "--limit" => args.limit = Duration::from_secs(value.parse().expect("--limit SECS")),
            other => panic!(
                "unknown flag {other}; flags: --worker PATH --messages N --kill-every SECS \
                 --photos DIR --limit SECS"
            ),
        }
    }
    args
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = parse_args();
    let worker = std::fs::canonicalize(&args.worker)
        .unwrap_or_else(|e| panic!("{}: {e} (build it first)", args.worker.display()));
    let storage = TempDir::new("chaos-mongo");
    let storage_path = storage.path().join("db");
    let storage_path = storage_path.to_str().expect("utf-8 path").to_string();
    let mongo_port = free_port();
    let logs = std::env::temp_dir().join("facegroup-chaos-logs");
    let mut s = TestStack::start(
        facegroup_worker::aws::loader(),
        start_moto(),
        start_mongo_on(mongo_port, &storage_path),
        &logs,
        "chaos",
    )
    .await;
    let (queue, dlq) = create_queue(&s.sqs, "detect", 30, Some(5)).await;
    let dlq = dlq.expect("dlq");

    let keys = upload_photos(&s, &args.photos).await;
    let started = Instant::now();
    for i in 0..args.messages {
        let key = &keys[i % keys.len()];
        s.send(
            &queue,
            json!({"image_id": format!("img{i:06}"), "gallery_id": GALLERY,
                   "bucket": s.bucket, "key": key}),
        )
        .await;
    }

    // Visibility short enough that a killed worker's messages come back within seconds; the
    // heartbeat keeps a live worker's jobs hidden.
    let timing = WorkerTiming {
        visibility: 10,
        heartbeat: 3,
        idle_exit: 5,
    };
    let models = models_dir();
    let env = [
        ("FACEGROUP_MODELS_DIR", models.to_str().expect("utf-8 path")),
        ("FACEGROUP_INTRA_THREADS", "1"),
        ("RUST_LOG", "warn"),
    ];
    let mut steady = s.worker(&worker, "steady", &queue, timing, &env);
    let mut chaotic = s.worker(&worker, "chaotic-0", &queue, timing, &env);
    let (mut kills, mut mongo_restarts) = (0usize, 0usize);
    let mut last_kill = Instant::now();
    let (mut done, mut failed) = (0u64, 0u64);
    while started.elapsed() < args.limit {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if last_kill.elapsed() >= args.kill_every {
            let _ = chaotic.kill(); // SIGKILL
            let _ = chaotic.wait();
            kills += 1;
            chaotic = s.worker(&worker, &format!("chaotic-{kills}"), &queue, timing, &env);
            last_kill = Instant::now();
        }
        if let Some((d, f)) = status_counts(&s).await {
            (done, failed) = (d, f);
        }
        // MongoDB goes away once, for longer than a visibility timeout, a third of the way in.
        if mongo_restarts == 0 && (done + failed) as usize >= args.messages / 3 {
            s.mongo.terminate();
            tokio::time::sleep(Duration::from_secs(15)).await;
            s.mongo = start_mongo_on(mongo_port, &storage_path);
            mongo_restarts += 1;
        }
        if (done + failed) as usize >= args.messages && queue_counts(&s.sqs, &queue).await == (0, 0)
        {
            break;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    stop(&mut steady);
    stop(&mut chaotic);

    let duplicates = duplicate_faces(&s).await;
    let (q, d) = (
        queue_counts(&s.sqs, &queue).await,
        queue_counts(&s.sqs, &dlq).await,
    );
    println!(
        "chaos messages={} done={done} failed={failed} duplicate_faces={duplicates} \
         queue={}+{} dlq={}+{} kills={kills} mongo_restarts={mongo_restarts} seconds={seconds:.1}",
        args.messages, q.0, q.1, d.0, d.1
    );
    let ok =
        (done + failed) as usize == args.messages && duplicates == 0 && q == (0, 0) && d == (0, 0);
    if !ok {
        eprintln!(
            "chaos: a guarantee was broken; worker logs in {}",
            logs.display()
        );
        std::process::exit(1);
    }
}

/// Uploads every JPEG of `dir`; returns their keys.
async fn upload_photos(s: &TestStack, dir: &Path) -> Vec<String> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .is_some_and(|x| x.eq_ignore_ascii_case("jpg") || x.eq_ignore_ascii_case("jpeg"))
        })
        .collect();
    names.sort();
    assert!(!names.is_empty(), "no JPEG in {}", dir.display());
    let mut keys = Vec::with_capacity(names.len());
    for (i, path) in names.iter().enumerate() {
        let key = format!("uploads/{i:05}.jpg");
        s.upload(&key, std::fs::read(path).expect("photo")).await;
        keys.push(key);
    }
    keys
}

/// `(done, failed)` images of the gallery; `None` while MongoDB is away.
async fn status_counts(s: &TestStack) -> Option<(u64, u64)> {
    let images = s.db.database("huemn").collection::<Document>("images");
    let count = |status: &'static str| {
        images.count_documents(doc! {"gallery_id": GALLERY, "status": status})
    };
    Some((count("done").await.ok()?, count("failed").await.ok()?))
}

/// Faces stored more than once: the same (image, face index) twice, or more faces for an image
/// than its `face_count` says.
async fn duplicate_faces(s: &TestStack) -> u64 {
    let faces =
        s.db.database("gallery_images")
            .collection::<Document>("faces");
    let pipeline = [
        doc! {"$match": {"gallery_id": GALLERY}},
        doc! {"$group": {"_id": {"image": "$image_id", "index": "$face_index"}, "n": {"$sum": 1}}},
        doc! {"$match": {"n": {"$gt": 1}}},
    ];
    let repeated: Vec<Document> = faces
        .aggregate(pipeline)
        .await
        .expect("aggregate faces")
        .try_collect()
        .await
        .expect("faces");
    let stored = faces
        .count_documents(doc! {"gallery_id": GALLERY})
        .await
        .expect("count faces");
    let images = s.db.database("huemn").collection::<Document>("images");
    let mut expected = 0u64;
    let mut cursor = images
        .find(doc! {"gallery_id": GALLERY, "status": "done"})
        .await
        .expect("images");
    while let Some(img) = cursor.try_next().await.expect("image") {
        expected += img.get_i32("face_count").unwrap_or(0) as u64;
    }
    repeated.len() as u64 + stored.saturating_sub(expected)
}

/// SIGTERM (the worker releases what it holds) and wait.
fn stop(child: &mut Child) {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}
