//! The detection worker's events end to end (real models, moto, SecantusDB, a local HTTP
//! receiver): with the receiver down the jobs still finish (done, failed) and their messages
//! are deleted, the events wait in the outbox, and arrive signed once the receiver is up; a
//! callback to a host that is not allowed is refused without a request and the job is done
//! anyway; a redelivered job adds no second event.

use std::path::PathBuf;
use std::time::Duration;

use mongodb::bson::{doc, Document};
use serde_json::{json, Value};

use facegroup_testkit::{
    create_queue, free_port, image_bytes, models_dir, queue_counts, start_mongo, start_moto,
    wait_exit, wait_for, HttpReceiver, TestStack, WorkerTiming,
};
use facegroup_worker::events::{self, status};
use facegroup_worker::mongo::image_key;

const GALLERY: &str = "g1";
const SECRET: &str = "detection-events-secret";
const LIMIT: Duration = Duration::from_secs(120);
const TIMING: WorkerTiming = WorkerTiming {
    visibility: 4,
    heartbeat: 1,
    idle_exit: 2,
};

async fn outbox(s: &TestStack, image: &str) -> Vec<Document> {
    s.find(
        "huemn",
        events::OUTBOX_COLLECTION,
        doc! {"gallery_id": GALLERY, "image_id": image, "target": "callback"},
    )
    .await
}

async fn image_status(s: &TestStack, image: &str) -> Option<Document> {
    s.find("huemn", "images", doc! {"_id": image_key(GALLERY, image)})
        .await
        .pop()
}

fn detection_job(s: &TestStack, image: &str, key: &str, callback: &str) -> Value {
    json!({"image_id": image, "gallery_id": GALLERY, "bucket": s.bucket, "key": key,
           "callback": callback})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_finish_while_the_receiver_is_down_and_their_events_arrive_later() {
    let logs = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("worker-logs");
    let s = TestStack::start(
        facegroup_worker::aws::loader(),
        start_moto(),
        start_mongo(),
        &logs,
        "events",
    )
    .await;
    let (queue, _) = create_queue(&s.sqs, "detect-events", TIMING.visibility, Some(5)).await;
    s.upload("uploads/obama.jpg", image_bytes("obama.jpg"))
        .await;
    let mut corrupt = image_bytes("biden.jpg");
    corrupt.truncate(300);
    s.upload("uploads/corrupt.jpg", corrupt).await;

    // Nothing listens on the callback port yet.
    let port = free_port();
    let callback = format!("http://127.0.0.1:{port}/facegroup");
    let models = models_dir();
    let mut worker = s.worker(
        &PathBuf::from(env!("CARGO_BIN_EXE_facegroup-detection-worker")),
        "detection",
        &queue,
        TIMING,
        &[
            ("FACEGROUP_MODELS_DIR", models.to_str().expect("utf-8 path")),
            ("FACEGROUP_INTRA_THREADS", "1"),
            ("FACEGROUP_CALLBACK_ALLOWED_HOSTS", "127.0.0.1"),
            ("FACEGROUP_CALLBACK_ALLOW_LOOPBACK", "true"),
            ("FACEGROUP_CALLBACK_ALLOW_HTTP", "true"),
            ("FACEGROUP_CALLBACK_SECRET", SECRET),
            ("FACEGROUP_EVENTS_BACKOFF_MS", "100"),
            ("FACEGROUP_EVENTS_BACKOFF_MAX_SECS", "1"),
            ("FACEGROUP_EVENTS_MAX_ATTEMPTS", "100"),
            ("FACEGROUP_EVENTS_POLL_SECS", "1"),
        ],
    );

    s.send(
        &queue,
        detection_job(&s, "obama", "uploads/obama.jpg", &callback),
    )
    .await;
    s.send(
        &queue,
        detection_job(&s, "corrupt", "uploads/corrupt.jpg", &callback),
    )
    .await;
    let metadata = "http://169.254.169.254/latest/meta-data/iam/security-credentials/";
    s.send(
        &queue,
        detection_job(&s, "refused", "uploads/obama.jpg", metadata),
    )
    .await;

    // Every job finishes and its message is deleted although no callback got through.
    wait_for("all three jobs settled", LIMIT, || async {
        let st = |d: Option<Document>| d.and_then(|d| d.get_str("status").ok().map(str::to_string));
        st(image_status(&s, "obama").await).as_deref() == Some("done")
            && st(image_status(&s, "corrupt").await).as_deref() == Some("failed")
            && st(image_status(&s, "refused").await).as_deref() == Some("done")
            && queue_counts(&s.sqs, &queue).await == (0, 0)
    })
    .await;
    for image in ["obama", "corrupt"] {
        wait_for(
            &format!("{image}: a failed attempt counted"),
            LIMIT,
            || async {
                let e = outbox(&s, image).await;
                e.len() == 1
                    && e[0].get_str("status") == Ok(status::PENDING)
                    && e[0].get_i32("attempts").unwrap_or(0) >= 1
            },
        )
        .await;
    }
    let refused = outbox(&s, "refused").await;
    assert_eq!(refused.len(), 1);
    assert_eq!(
        refused[0].get_str("status"),
        Ok(status::REFUSED),
        "{refused:?}"
    );
    assert_eq!(refused[0].get_i32("attempts"), Ok(0), "never attempted");

    // The receiver comes up: both events arrive, signed.
    let receiver = HttpReceiver::start(port, &[]).await;
    for image in ["obama", "corrupt"] {
        wait_for(&format!("{image}: delivered"), LIMIT, || async {
            outbox(&s, image).await[0].get_str("status") == Ok(status::DELIVERED)
        })
        .await;
    }
    let got = receiver.requests();
    assert_eq!(got.len(), 2, "one request per event");
    let mut bodies = std::collections::BTreeMap::new();
    for r in &got {
        assert_eq!(r.path, "/facegroup");
        let ts = r.header("x-facegroup-timestamp").expect("timestamp");
        let sig = r.header("x-facegroup-signature").expect("signature");
        assert!(events::verify_signature(
            SECRET.as_bytes(),
            ts,
            &r.body,
            sig
        ));
        let body: Value = serde_json::from_slice(&r.body).expect("json");
        bodies.insert(
            body["image_id"].as_str().expect("image id").to_string(),
            body,
        );
    }
    let done = &bodies["obama"];
    assert_eq!(done["type"], "image.done");
    let faces = image_status(&s, "obama")
        .await
        .and_then(|d| d.get_i32("face_count").ok())
        .expect("face count");
    assert!(faces > 0);
    assert_eq!(done["face_count"], faces);
    assert_eq!(bodies["corrupt"]["type"], "image.failed");
    assert_eq!(bodies["corrupt"]["failure"]["class"], "permanent");

    // The same job again: a duplicate of a done image records nothing new.
    s.send(
        &queue,
        detection_job(&s, "obama", "uploads/obama.jpg", &callback),
    )
    .await;
    wait_for("the duplicate acknowledged", LIMIT, || async {
        queue_counts(&s.sqs, &queue).await == (0, 0)
    })
    .await;
    let again = outbox(&s, "obama").await;
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(again[0].get_str("status"), Ok(status::DELIVERED));

    // SIGTERM: the worker stops cleanly with its delivery task.
    let pid = worker.id().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let exit = wait_exit(&mut worker, LIMIT).await;
    assert_eq!(exit.code(), Some(0));
}
