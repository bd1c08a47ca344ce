//! Both workers and the scaler under moto's IAM enforcement, each with the credentials of a user
//! holding exactly the policies of its role in `batch/facegroup-batch.yaml` (rendered from the
//! template by `scripts/iam_policies.py`, not copied): every call they make must be allowed, the
//! first grouping of a new gallery must succeed, and writes outside a role's prefixes must be
//! denied.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Child;
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use mongodb::bson::doc;
use serde_json::{json, Value};

use facegroup_testkit::*;

const BUCKET: &str = "photos";
const GALLERY: &str = "g-iam";
const JOB_QUEUE: &str = "facegroup-gpu";

/// An access key pair of one of the test's IAM users.
#[derive(Clone)]
struct Keys {
    key: String,
    secret: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_and_scaler_run_under_the_stacks_iam_policies() {
    let logs = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("worker-logs");
    let stack = TestStack::start(
        facegroup_worker::aws::loader(),
        start_moto(),
        start_mongo(),
        &logs,
        "iam",
    )
    .await;
    let (moto, sqs) = (&stack.moto, &stack.sqs);
    let setup = sdk_config(facegroup_worker::aws::loader(), moto).await;
    let (detect_q, detect_dlq) = create_queue(sqs, "detection", 30, Some(5)).await;
    let (group_q, group_dlq) = create_queue(sqs, "grouping", 30, Some(5)).await;
    let photos = ["obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg"];
    for name in photos {
        stack
            .upload(&format!("photos/{name}"), image_bytes(name))
            .await;
    }

    let keys = iam_users(moto, &detect_q, &group_q);
    // From here on every request needs an IAM user's keys; the test drives with `admin`.
    let admin = client_config(moto, &keys["admin"]).await;
    let sqs = aws_sdk_sqs::Client::new(&admin);
    let s3 = s3_client(&admin);
    let admin_ok = sqs
        .get_queue_url()
        .queue_name("detection")
        .send()
        .await
        .is_ok();
    assert!(admin_ok, "the admin user works under enforcement");
    let anonymous = aws_sdk_sqs::Client::new(&setup)
        .get_queue_url()
        .queue_name("detection")
        .send()
        .await;
    assert!(
        anonymous.is_err(),
        "enforcement is on: test keys are refused"
    );
    for name in photos {
        let id = name.trim_end_matches(".jpg");
        sqs.send_message()
            .queue_url(&detect_q)
            .message_body(
                json!({"image_id": id, "gallery_id": GALLERY, "bucket": BUCKET,
                       "key": format!("photos/{name}")})
                .to_string(),
            )
            .send()
            .await
            .expect("send");
    }
    // A photo that was deleted upstream: a clear permanent failure, not a retry into the DLQ.
    sqs.send_message()
        .queue_url(&detect_q)
        .message_body(
            json!({"image_id": "gone", "gallery_id": GALLERY, "bucket": BUCKET,
                   "key": "photos/gone.jpg"})
            .to_string(),
        )
        .send()
        .await
        .expect("send");

    let mut det = worker(
        &stack,
        "detection",
        &keys["DetectionJobRole"],
        &detect_q,
        &[
            ("FACEGROUP_GROUPING_QUEUE_URL", group_q.as_str()),
            ("FACEGROUP_GROUP_AFTER_FACES", "1"),
        ],
    );
    assert_eq!(
        wait_exit(&mut det, Duration::from_secs(300)).await.code(),
        Some(0),
        "detection worker drained"
    );
    let mut grp = worker(&stack, "grouping", &keys["GroupingJobRole"], &group_q, &[]);
    assert_eq!(
        wait_exit(&mut grp, Duration::from_secs(180)).await.code(),
        Some(0),
        "grouping worker drained"
    );

    // Every photo done, the deleted one failed, nothing retried into a dead-letter queue.
    let images = stack
        .db
        .database("huemn")
        .collection::<mongodb::bson::Document>("images");
    let done = images
        .count_documents(doc! {"status": "done"})
        .await
        .expect("count");
    assert_eq!(done, photos.len() as u64);
    let failed = images
        .count_documents(doc! {"status": "failed"})
        .await
        .expect("count");
    assert_eq!(failed, 1, "the missing photo is marked failed");
    for q in [
        &detect_q,
        &group_q,
        &detect_dlq.expect("dlq"),
        &group_dlq.expect("dlq"),
    ] {
        assert_eq!(queue_counts(&sqs, q).await, (0, 0), "{q} empty");
    }
    // The first grouping of this new gallery committed a run with the obama photos together.
    let latest = s3_json(&s3, BUCKET, &format!("groups/{GALLERY}/latest.json")).await;
    let run = s3_json(&s3, BUCKET, latest["key"].as_str().expect("key")).await;
    let persons = run["persons"].as_array().expect("persons");
    assert_eq!(persons.len(), 1, "{run}");
    assert_eq!(persons[0]["face_ids"].as_array().map(Vec::len), Some(3));
    for log in ["detection", "grouping"].map(|tag| stack.log_path(tag)) {
        let text = std::fs::read_to_string(&log).expect("log");
        let log = log.display();
        for word in ["AccessDenied", "not authorized", "InvalidClientTokenId"] {
            assert!(!text.contains(word), "{log} mentions {word:?}:\n{text}");
        }
    }

    // The scaler, with its own role's keys, reads both queues and counts jobs.
    let scaler = client_config(moto, &keys["ScalerJobRole"]).await;
    for q in [&detect_q, &group_q] {
        let target = facegroup_scaler::Target {
            queue_url: q.clone(),
            job_queue: JOB_QUEUE.into(),
            job_definition: "facegroup-detection".into(),
            job_name: "facegroup-detection".into(),
        };
        let policy = facegroup_scaler::Policy {
            messages_per_job: 100,
            max_jobs: 4,
        };
        facegroup_scaler::scale_once(
            &aws_sdk_sqs::Client::new(&scaler),
            &aws_sdk_batch::Client::new(&scaler),
            &target,
            policy,
            true,
        )
        .await
        .expect("scaler allowed");
    }

    // Least privilege: writes outside a role's own prefixes are denied.
    let detection = s3_client(&client_config(moto, &keys["DetectionJobRole"]).await);
    let grouping = s3_client(&client_config(moto, &keys["GroupingJobRole"]).await);
    for (who, client, key) in [
        ("detection", &detection, "groups/g/forged.json"),
        ("detection", &detection, "photos/overwrite.jpg"),
        ("grouping", &grouping, "thumbnails/g/forged.jpg"),
        ("grouping", &grouping, "photos/overwrite.jpg"),
    ] {
        let put = client
            .put_object()
            .bucket(BUCKET)
            .key(key)
            .body(ByteStream::from_static(b"{}"))
            .send()
            .await;
        let err = put.expect_err(&format!("{who} must not write {key}"));
        let text = format!("{}", aws_sdk_s3::error::DisplayErrorContext(&err));
        assert!(text.contains("AccessDenied"), "{who} {key}: {text}");
    }
    let other_queue =
        aws_sdk_sqs::Client::new(&client_config(moto, &keys["GroupingJobRole"]).await)
            .receive_message()
            .queue_url(&detect_q)
            .send()
            .await;
    assert!(
        other_queue.is_err(),
        "the grouping role must not consume the detection queue"
    );
}

/// Creates one IAM user per role of the template (and an admin), returns their keys and turns
/// IAM enforcement on.
fn iam_users(moto: &Server, detect_q: &str, group_q: &str) -> HashMap<String, Keys> {
    let policies = run_python(
        &[
            "scripts/iam_policies.py",
            "--param",
            &format!("BucketName={BUCKET}"),
            "--queue",
            &format!("DetectionQueue={detect_q}"),
            "--queue",
            &format!("GroupingQueue={group_q}"),
            "--moto",
        ],
        b"",
    );
    let out = run_python(
        &[
            "crates/detection-worker/tests/iam_setup.py",
            &moto.endpoint(),
            JOB_QUEUE,
        ],
        &policies,
    );
    let keys: HashMap<String, Value> = serde_json::from_slice(&out).expect("keys JSON");
    keys.into_iter()
        .map(|(role, k)| {
            let text = |f: &str| k[f].as_str().expect("key field").to_string();
            (
                role,
                Keys {
                    key: text("key"),
                    secret: text("secret"),
                },
            )
        })
        .collect()
}

async fn client_config(moto: &Server, keys: &Keys) -> aws_config::SdkConfig {
    moto_loader(facegroup_worker::aws::loader(), moto)
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            &keys.key,
            &keys.secret,
            None,
            None,
            "iam-test",
        ))
        .load()
        .await
}

fn s3_client(conf: &aws_config::SdkConfig) -> aws_sdk_s3::Client {
    facegroup_worker::aws::s3_client(conf, true)
}

/// Starts a worker binary in drain mode with the given user's keys.
fn worker(
    stack: &TestStack,
    kind: &str,
    keys: &Keys,
    queue: &str,
    extra: &[(&str, &str)],
) -> Child {
    let detection = PathBuf::from(env!("CARGO_BIN_EXE_facegroup-detection-worker"));
    let bin = detection.with_file_name(format!("facegroup-{kind}-worker"));
    assert!(
        bin.exists(),
        "{} missing: `cargo build -p facegroup-{kind}-worker` (scripts/test.sh does)",
        bin.display()
    );
    let models = models_dir();
    let mut env = vec![
        ("AWS_ACCESS_KEY_ID", keys.key.as_str()),
        ("AWS_SECRET_ACCESS_KEY", keys.secret.as_str()),
        (
            "FACEGROUP_MODELS_DIR",
            models.to_str().expect("utf-8 models path"),
        ),
        ("FACEGROUP_DRAIN", "true"),
        ("FACEGROUP_INTRA_THREADS", "1"),
    ];
    env.extend_from_slice(extra);
    let timing = WorkerTiming {
        visibility: 10,
        heartbeat: 2,
        idle_exit: 3,
    };
    stack.worker(&bin, kind, queue, timing, &env)
}
