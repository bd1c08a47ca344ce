//! Load benchmark (not a test): N detection jobs (default 1000) through one detection worker
//! against moto + SecantusDB; reports throughput, p50/p99 latencies and checks that every
//! message ended as done or failed (count in == done + failed).
//!
//! Run after `cargo build -p facegroup-detection-worker` (the worker binary is taken from the same
//! target directory):
//!   cargo run -p facegroup-detection-worker --example loadbench -- [N] [MAX_IN_FLIGHT]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use futures::TryStreamExt;
use mongodb::bson::{doc, Document};

use facegroup_testkit::{
    create_queue, images_dir, models_dir, mongo_uri, queue_counts, repo_root, sdk_config,
    start_mongo, start_moto, worker_env,
};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let in_flight: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(4);

    let moto = start_moto();
    let mongo = start_mongo();
    let conf = sdk_config(facegroup_worker::aws::loader(), &moto).await;
    let sqs = facegroup_worker::aws::sqs_client(&conf);
    let s3 = facegroup_worker::aws::s3_client(&conf, true);
    let db = mongodb::Client::with_uri_str(mongo_uri(mongo.port))
        .await
        .expect("mongo");
    s3.create_bucket()
        .bucket("bench")
        .send()
        .await
        .expect("bucket");
    let (queue, dlq) = create_queue(&sqs, "bench", 60, Some(5)).await;
    let dlq = dlq.expect("dlq");

    // The sample photos, plus one corrupt file so the failure path is part of the load.
    let dir = images_dir();
    let mut keys = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("photos") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("x")
            .to_string();
        let key = format!("in/{name}");
        s3.put_object()
            .bucket("bench")
            .key(&key)
            .body(ByteStream::from(std::fs::read(&path).expect("read")))
            .send()
            .await
            .expect("put");
        keys.push(key);
    }
    keys.sort();
    s3.put_object()
        .bucket("bench")
        .key("in/corrupt.jpg")
        .body(ByteStream::from(vec![0xFF, 0xD8, 0xFF, 0x00, 1, 2, 3]))
        .send()
        .await
        .expect("put");

    let started = Instant::now();
    let mut sent = 0;
    for chunk in (0..n).collect::<Vec<_>>().chunks(10) {
        let entries: Vec<SendMessageBatchRequestEntry> = chunk
            .iter()
            .map(|&i| {
                // Every 100th job points at the corrupt file.
                let key = if i % 100 == 99 {
                    "in/corrupt.jpg"
                } else {
                    &keys[i % keys.len()]
                };
                let body = serde_json::json!({
                    "image_id": format!("img{i:05}"), "gallery_id": format!("g{}", i % 10),
                    "bucket": "bench", "key": key,
                });
                SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(body.to_string())
                    .build()
                    .expect("entry")
            })
            .collect();
        let out = sqs
            .send_message_batch()
            .queue_url(&queue)
            .set_entries(Some(entries))
            .send()
            .await
            .expect("send batch");
        sent += out.successful().len();
    }
    assert_eq!(sent, n, "all messages accepted");
    let send_secs = started.elapsed().as_secs_f64();

    let worker = std::env::current_exe()
        .expect("exe")
        .parent()
        .and_then(|p| p.parent())
        .map(|p| p.join("facegroup-detection-worker"))
        .expect("worker path");
    let log = std::fs::File::create("/tmp/facegroup-loadbench-worker.log").expect("log");
    let t0 = Instant::now();
    let status = Command::new(&worker)
        .current_dir(repo_root())
        .envs(worker_env(&moto, mongo.port))
        .env("RUST_LOG", "warn")
        .env("FACEGROUP_QUEUE_URL", &queue)
        .env("FACEGROUP_BUCKET", "bench")
        .env("FACEGROUP_MODELS_DIR", models_dir())
        .env("FACEGROUP_DRAIN", "true")
        .env("FACEGROUP_IDLE_EXIT_SECS", "2")
        .env("FACEGROUP_WAIT_TIME_SECS", "1")
        .env("FACEGROUP_MAX_IN_FLIGHT", in_flight.to_string())
        .env("FACEGROUP_LIVENESS_FILE", "/tmp/facegroup-loadbench.alive")
        .stdout(Stdio::null())
        .stderr(log)
        .status()
        .unwrap_or_else(|e| panic!("running {}: {e}", worker.display()));
    let run_secs = t0.elapsed().as_secs_f64();

    let images: Vec<Document> = db
        .database("huemn")
        .collection::<Document>("images")
        .find(doc! {})
        .await
        .expect("find")
        .try_collect()
        .await
        .expect("images");
    let done = images
        .iter()
        .filter(|d| d.get_str("status") == Ok("done"))
        .count();
    let failed = images
        .iter()
        .filter(|d| d.get_str("status") == Ok("failed"))
        .count();
    let mut processing: Vec<i64> = images
        .iter()
        .filter_map(|d| {
            let a = d.get_datetime("started_at").ok()?.timestamp_millis();
            let b = d.get_datetime("updated_at").ok()?.timestamp_millis();
            Some(b - a)
        })
        .collect();
    processing.sort_unstable();
    let faces = db
        .database("gallery_images")
        .collection::<Document>("faces")
        .count_documents(doc! {})
        .await
        .expect("count");
    let (left, hidden) = queue_counts(&sqs, &queue).await;
    let (dead, _) = queue_counts(&sqs, &dlq).await;
    let pct = |p: f64| -> i64 {
        if processing.is_empty() {
            return 0;
        }
        processing[((processing.len() - 1) as f64 * p).round() as usize]
    };
    println!("messages sent          {n} (in {send_secs:.1} s)");
    println!("worker exit            {status}");
    println!("worker wall time       {run_secs:.1} s");
    println!("throughput             {:.1} images/s", n as f64 / run_secs);
    println!(
        "job latency p50 / p99  {} / {} ms (status pending -> done/failed)",
        pct(0.5),
        pct(0.99)
    );
    println!("done / failed          {done} / {failed} (faces stored {faces})");
    println!("queue left / in flight / dlq  {left} / {hidden} / {dead}");
    let ok = done + failed == n && left == 0 && hidden == 0 && dead == 0;
    println!(
        "count in == done + failed: {}",
        if ok { "yes" } else { "NO" }
    );
    drop(moto);
    drop(mongo);
    std::thread::sleep(Duration::from_millis(100));
    if !ok {
        std::process::exit(1);
    }
}
