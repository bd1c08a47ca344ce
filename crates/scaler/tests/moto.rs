//! End to end against moto's SQS and Batch (`moto[server]==5.2.5`, installed into .venv by
//! scripts/setup.sh): the test starts `moto_server` on a free port, switches moto's Batch to its
//! container-less mode (submitted jobs finish at once), and runs scaling rounds.
//!
//! The server binary is `$MOTO_SERVER`, else `<repo>/.venv/bin/moto_server` (see the test kit).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use aws_sdk_batch::types::{
    CeState, CeType, ComputeEnvironmentOrder, ContainerProperties, JobDefinitionType, JobStatus,
    JqState, ResourceRequirement, ResourceType,
};
use facegroup_scaler::{scale_once, Policy, Target};
use facegroup_testkit::{sdk_config, Server};

/// Minimal HTTP/1.1 request to moto (its own API, or a query-protocol call); returns
/// (status, whole response).
fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{headers}\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, out))
}

/// moto with its Batch switched to container-less mode and the IAM role Batch needs.
fn start_moto() -> Server {
    let moto = facegroup_testkit::start_moto();
    let port = moto.port;
    // Batch without Docker: submitted jobs are marked SUCCEEDED at once.
    let (status, body) = http(
        port,
        "POST",
        "/moto-api/config",
        "Content-Type: application/json\r\n",
        r#"{"batch": {"use_docker": false}}"#,
    )
    .expect("configure moto");
    assert!(status < 300, "moto config: {body}");
    // Batch wants an existing IAM service role for a compute environment. One query-protocol call
    // (moto routes it by the credential scope and does not check signatures).
    let (status, body) = http(
        port,
        "POST",
        "/",
        "Content-Type: application/x-www-form-urlencoded\r\n\
         Authorization: AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/iam/aws4_request, \
         SignedHeaders=host, Signature=0\r\n",
        "Action=CreateRole&Version=2010-05-08&RoleName=batch-service&AssumeRolePolicyDocument=%7B%7D",
    )
    .expect("create IAM role");
    assert!(status < 300, "CreateRole: {body}");
    moto
}

const SERVICE_ROLE: &str = "arn:aws:iam::123456789012:role/batch-service";

async fn clients(moto: &Server) -> (aws_sdk_sqs::Client, aws_sdk_batch::Client) {
    let conf = sdk_config(facegroup_scaler::config_loader(), moto).await;
    (
        aws_sdk_sqs::Client::new(&conf),
        aws_sdk_batch::Client::new(&conf),
    )
}

async fn jobs_named(batch: &aws_sdk_batch::Client, queue: &str, name: &str) -> usize {
    let mut n = 0;
    for status in [
        JobStatus::Submitted,
        JobStatus::Pending,
        JobStatus::Runnable,
        JobStatus::Starting,
        JobStatus::Running,
        JobStatus::Succeeded,
        JobStatus::Failed,
    ] {
        let out = batch
            .list_jobs()
            .job_queue(queue)
            .job_status(status)
            .send()
            .await
            .unwrap();
        n += out
            .job_summary_list()
            .iter()
            .filter(|j| j.job_name() == Some(name))
            .count();
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaler_against_moto_sqs_and_batch() {
    let moto = start_moto();
    let (sqs, batch) = clients(&moto).await;

    let queue_url = sqs
        .create_queue()
        .queue_name("facegroup-detection")
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let ce = batch
        .create_compute_environment()
        .compute_environment_name("facegroup-test")
        .r#type(CeType::Unmanaged)
        .service_role(SERVICE_ROLE)
        .state(CeState::Enabled)
        .send()
        .await
        .unwrap();
    let job_queue = batch
        .create_job_queue()
        .job_queue_name("facegroup-gpu")
        .state(JqState::Enabled)
        .priority(1)
        .compute_environment_order(
            ComputeEnvironmentOrder::builder()
                .order(1)
                .compute_environment(ce.compute_environment_arn().unwrap())
                .build(),
        )
        .send()
        .await
        .unwrap()
        .job_queue_arn
        .unwrap();
    let resources = [(ResourceType::Vcpu, "4"), (ResourceType::Memory, "16384")];
    let job_definition = batch
        .register_job_definition()
        .job_definition_name("facegroup-detection")
        .r#type(JobDefinitionType::Container)
        .container_properties(
            ContainerProperties::builder()
                .image("facegroup-detection-worker:test")
                .command("--drain")
                .set_resource_requirements(Some(
                    resources
                        .iter()
                        .map(|(t, v)| {
                            ResourceRequirement::builder()
                                .r#type(t.clone())
                                .value(*v)
                                .build()
                        })
                        .collect(),
                ))
                .build(),
        )
        .send()
        .await
        .unwrap()
        .job_definition_arn
        .unwrap();
    let target = Target {
        queue_url: queue_url.clone(),
        job_queue: job_queue.clone(),
        job_definition,
        job_name: "facegroup-detection".into(),
    };

    // 1. Empty queue: nothing is submitted.
    let policy = Policy {
        messages_per_job: 50,
        max_jobs: 3,
    };
    let r = scale_once(&sqs, &batch, &target, policy, false)
        .await
        .unwrap();
    assert_eq!((r.depth.visible, r.depth.in_flight), (0, 0));
    assert_eq!(r.decision.submit, 0);
    assert_eq!(
        jobs_named(&batch, &job_queue, "facegroup-detection").await,
        0
    );

    // 2. 250 messages want 5 jobs of 50; the bound (3) wins.
    for batch_no in 0..25 {
        let mut req = sqs.send_message_batch().queue_url(&queue_url);
        for i in 0..10 {
            req = req.entries(
                aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                    .id(format!("m{i}"))
                    .message_body(format!(
                        r#"{{"image_id":"img-{batch_no}-{i}","gallery_id":"g","bucket":"b","key":"k"}}"#
                    ))
                    .build()
                    .unwrap(),
            );
        }
        req.send().await.unwrap();
    }
    let r = scale_once(&sqs, &batch, &target, policy, false)
        .await
        .unwrap();
    assert_eq!(r.depth.visible, 250);
    assert_eq!(r.decision.wanted, 3);
    assert_eq!(r.decision.submit, 3);
    assert_eq!(r.submitted_job_ids.len(), 3);
    assert_eq!(
        jobs_named(&batch, &job_queue, "facegroup-detection").await,
        3
    );

    // 3. In-flight messages count towards the backlog; jobs that already finished (moto's
    //    container-less Batch marks them SUCCEEDED at once) do not count as active.
    sqs.receive_message()
        .queue_url(&queue_url)
        .max_number_of_messages(10)
        .visibility_timeout(1800)
        .send()
        .await
        .unwrap();
    let policy = Policy {
        messages_per_job: 50,
        max_jobs: 10,
    };
    let r = scale_once(&sqs, &batch, &target, policy, false)
        .await
        .unwrap();
    assert_eq!((r.depth.visible, r.depth.in_flight), (240, 10));
    assert_eq!(r.decision.active, 0);
    assert_eq!(r.decision.wanted, 5);
    assert_eq!(r.decision.submit, 5);
    assert_eq!(
        jobs_named(&batch, &job_queue, "facegroup-detection").await,
        8
    );

    // 4. A dry run decides but submits nothing.
    let r = scale_once(&sqs, &batch, &target, policy, true)
        .await
        .unwrap();
    assert_eq!(r.decision.submit, 5);
    assert!(r.submitted_job_ids.is_empty());
    assert_eq!(
        jobs_named(&batch, &job_queue, "facegroup-detection").await,
        8
    );
}
