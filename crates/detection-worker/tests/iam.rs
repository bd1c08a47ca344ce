//! Both workers and the scaler under moto's IAM enforcement, each with the credentials of a user
//! holding exactly the policies of its role in `batch/facegroup-batch.yaml` (rendered from the
//! template by `scripts/iam_policies.py`, not copied): every call they make must be allowed, the
//! first grouping of a new gallery must succeed, and writes outside a role's prefixes must be
//! denied.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
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
    let moto = start_moto();
    let mongo = start_mongo();
    let setup = sdk_config(facegroup_worker::aws::loader(), &moto).await;
    let sqs = aws_sdk_sqs::Client::new(&setup);
    let s3 = s3_client(&setup);
    s3.create_bucket()
        .bucket(BUCKET)
        .send()
        .await
        .expect("bucket");
    let (detect_q, detect_dlq) = create_queue(&sqs, "detection", 30, Some(5)).await;
    let (group_q, group_dlq) = create_queue(&sqs, "grouping", 30, Some(5)).await;
    let photos = ["obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg"];
    for name in photos {
        let bytes = std::fs::read(repo_root().join("testdata/images").join(name)).expect("photo");
        s3.put_object()
            .bucket(BUCKET)
            .key(format!("photos/{name}"))
            .body(ByteStream::from(bytes))
            .send()
            .await
            .expect("upload");
    }

    let keys = iam_users(&moto, &detect_q, &group_q);
    // From here on every request needs an IAM user's keys; the test drives with `admin`.
    let admin = client_config(&moto, &keys["admin"]).await;
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

    let logs = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("worker-logs");
    std::fs::create_dir_all(&logs).expect("log dir");
    let mut det = worker(
        "detection",
        &moto,
        mongo.port,
        &keys["DetectionJobRole"],
        &detect_q,
        &logs.join("iam.detection.log"),
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
    let mut grp = worker(
        "grouping",
        &moto,
        mongo.port,
        &keys["GroupingJobRole"],
        &group_q,
        &logs.join("iam.grouping.log"),
        &[],
    );
    assert_eq!(
        wait_exit(&mut grp, Duration::from_secs(180)).await.code(),
        Some(0),
        "grouping worker drained"
    );

    // Every photo done, the deleted one failed, nothing retried into a dead-letter queue.
    let db = mongodb::Client::with_uri_str(mongo_uri(mongo.port))
        .await
        .expect("mongo");
    let images = db
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
    for log in ["iam.detection.log", "iam.grouping.log"] {
        let text = std::fs::read_to_string(logs.join(log)).expect("log");
        for word in ["AccessDenied", "not authorized", "InvalidClientTokenId"] {
            assert!(!text.contains(word), "{log} mentions {word:?}:\n{text}");
        }
    }

    // The scaler, with its own role's keys, reads both queues and counts jobs.
    let scaler = client_config(&moto, &keys["ScalerJobRole"]).await;
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
    let detection = s3_client(&client_config(&moto, &keys["DetectionJobRole"]).await);
    let grouping = s3_client(&client_config(&moto, &keys["GroupingJobRole"]).await);
    for (who, client, key) in [
        ("detection", &detection, "groups/g/forged.json"),
        ("detection", &detection, "photos/overwrite.jpg"),
        ("grouping", &grouping, "faces/g/forged.json"),
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
        aws_sdk_sqs::Client::new(&client_config(&moto, &keys["GroupingJobRole"]).await)
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
    let python = repo_root().join(".venv/bin/python");
    let policies = Command::new(&python)
        .current_dir(repo_root())
        .args([
            "scripts/iam_policies.py",
            "--param",
            &format!("BucketName={BUCKET}"),
            "--queue",
            &format!("DetectionQueue={detect_q}"),
            "--queue",
            &format!("GroupingQueue={group_q}"),
            "--moto",
        ])
        .output()
        .expect("iam_policies.py");
    assert!(
        policies.status.success(),
        "iam_policies.py: {}",
        String::from_utf8_lossy(&policies.stderr)
    );
    let mut setup = Command::new(&python)
        .arg(repo_root().join("crates/detection-worker/tests/iam_setup.py"))
        .args([&moto.endpoint(), JOB_QUEUE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("iam_setup.py");
    setup
        .stdin
        .take()
        .expect("stdin")
        .write_all(&policies.stdout)
        .expect("write policies");
    let out = setup.wait_with_output().expect("iam_setup.py");
    assert!(
        out.status.success(),
        "iam_setup.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let keys: HashMap<String, Value> = serde_json::from_slice(&out.stdout).expect("keys JSON");
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
#[allow(clippy::too_many_arguments)]
fn worker(
    kind: &str,
    moto: &Server,
    mongo_port: u16,
    keys: &Keys,
    queue: &str,
    log: &std::path::Path,
    extra: &[(&str, &str)],
) -> Child {
    let detection = PathBuf::from(env!("CARGO_BIN_EXE_facegroup-detection-worker"));
    let bin = detection.with_file_name(format!("facegroup-{kind}-worker"));
    assert!(
        bin.exists(),
        "{} missing: `cargo build -p facegroup-{kind}-worker` (scripts/test.sh does)",
        bin.display()
    );
    let mut cmd = Command::new(bin);
    cmd.current_dir(repo_root())
        .envs(worker_env(moto, mongo_port))
        .env("AWS_ACCESS_KEY_ID", &keys.key)
        .env("AWS_SECRET_ACCESS_KEY", &keys.secret)
        .env("FACEGROUP_QUEUE_URL", queue)
        .env("FACEGROUP_BUCKET", BUCKET)
        .env("FACEGROUP_MODELS_DIR", repo_root().join("models"))
        .env("FACEGROUP_WAIT_TIME_SECS", "1")
        .env("FACEGROUP_VISIBILITY_SECS", "10")
        .env("FACEGROUP_HEARTBEAT_SECS", "2")
        .env("FACEGROUP_RETRY_BACKOFF_SECS", "1")
        .env("FACEGROUP_DRAIN", "true")
        .env("FACEGROUP_IDLE_EXIT_SECS", "3")
        .env("FACEGROUP_INTRA_THREADS", "1")
        .env("FACEGROUP_LIVENESS_FILE", log.with_extension("alive"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log file"));
    for (k, v) in extra {
        cmd.env(k, v);
    }
    cmd.spawn().expect("start worker")
}
