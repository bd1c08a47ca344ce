//! The AWS side of the test servers: SDK configuration pointing at moto, and SQS queues.
//!
//! The configuration starts from the caller's own loader (`facegroup_worker::aws::loader()`,
//! `facegroup_scaler::config_loader()`), so tests exercise the HTTP client production uses; the
//! kit only points it at moto with dummy credentials.

use std::collections::HashMap;

use aws_config::{ConfigLoader, Region, SdkConfig};
use aws_sdk_sqs::config::Credentials;
use aws_sdk_sqs::types::QueueAttributeName;

use crate::server::{Server, ACCESS_KEY, REGION};

/// `loader` pointed at `moto` with [`REGION`] and dummy credentials, to adjust further or load.
pub fn moto_loader(loader: ConfigLoader, moto: &Server) -> ConfigLoader {
    loader
        .endpoint_url(moto.endpoint())
        .region(Region::new(REGION))
        .credentials_provider(Credentials::new(
            ACCESS_KEY, ACCESS_KEY, None, None, "tests",
        ))
}

/// The SDK configuration of [`moto_loader`], loaded.
pub async fn sdk_config(loader: ConfigLoader, moto: &Server) -> SdkConfig {
    moto_loader(loader, moto).load().await
}

/// Creates a queue (and its DLQ `<name>-dlq` when `max_receive_count` is set); returns the
/// (queue, DLQ) URLs.
pub async fn create_queue(
    sqs: &aws_sdk_sqs::Client,
    name: &str,
    visibility_secs: u32,
    max_receive_count: Option<u32>,
) -> (String, Option<String>) {
    let mut create = sqs.create_queue().queue_name(name).attributes(
        QueueAttributeName::VisibilityTimeout,
        visibility_secs.to_string(),
    );
    let mut dlq_url = None;
    if let Some(max) = max_receive_count {
        let url = queue_url(
            sqs.create_queue()
                .queue_name(format!("{name}-dlq"))
                .send()
                .await,
        );
        let arn = queue_arn(sqs, &url).await;
        create = create.attributes(
            QueueAttributeName::RedrivePolicy,
            format!(r#"{{"deadLetterTargetArn":"{arn}","maxReceiveCount":"{max}"}}"#),
        );
        dlq_url = Some(url);
    }
    (queue_url(create.send().await), dlq_url)
}

/// The ARN of the queue at `url`; panics when it has none.
pub async fn queue_arn(sqs: &aws_sdk_sqs::Client, url: &str) -> String {
    attributes(sqs, url, [QueueAttributeName::QueueArn])
        .await
        .remove(&QueueAttributeName::QueueArn)
        .unwrap_or_else(|| panic!("{url} has no ARN"))
}

/// (visible, in flight) message counts of the queue at `url`, read in one call.
pub async fn queue_counts(sqs: &aws_sdk_sqs::Client, url: &str) -> (u64, u64) {
    use QueueAttributeName::{ApproximateNumberOfMessages, ApproximateNumberOfMessagesNotVisible};
    let attrs = attributes(
        sqs,
        url,
        [
            ApproximateNumberOfMessages,
            ApproximateNumberOfMessagesNotVisible,
        ],
    )
    .await;
    let count = |name| attrs.get(&name).and_then(|v| v.parse().ok()).unwrap_or(0);
    (
        count(ApproximateNumberOfMessages),
        count(ApproximateNumberOfMessagesNotVisible),
    )
}

/// Attributes of the queue at `url`; panics when the call fails.
async fn attributes(
    sqs: &aws_sdk_sqs::Client,
    url: &str,
    names: impl IntoIterator<Item = QueueAttributeName>,
) -> HashMap<QueueAttributeName, String> {
    let out = sqs
        .get_queue_attributes()
        .queue_url(url)
        .set_attribute_names(Some(names.into_iter().collect()))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GetQueueAttributes on {url}: {e:?}"));
    out.attributes.unwrap_or_default()
}

fn queue_url(
    out: Result<
        aws_sdk_sqs::operation::create_queue::CreateQueueOutput,
        aws_sdk_sqs::error::SdkError<aws_sdk_sqs::operation::create_queue::CreateQueueError>,
    >,
) -> String {
    out.unwrap_or_else(|e| panic!("CreateQueue: {e:?}"))
        .queue_url()
        .map(str::to_string)
        .unwrap_or_else(|| panic!("CreateQueue returned no queue URL"))
}

/// The JSON object at `s3://bucket/key`; panics (naming the key) when it is missing or not JSON.
pub async fn s3_json(s3: &aws_sdk_s3::Client, bucket: &str, key: &str) -> serde_json::Value {
    serde_json::from_slice(&s3_bytes(s3, bucket, key).await).expect("json")
}

/// The body of `s3://bucket/key`; panics (naming the key) when it is missing.
pub async fn s3_bytes(s3: &aws_sdk_s3::Client, bucket: &str, key: &str) -> Vec<u8> {
    let out = s3
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("get {key}: {e:?}"));
    out.body
        .collect()
        .await
        .expect("body")
        .into_bytes()
        .to_vec()
}

/// Every object of `bucket`, key -> body (listed, so a test sees what is really there: one
/// page of up to 1,000 keys, plenty for a test bucket).
pub async fn s3_objects(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
) -> std::collections::BTreeMap<String, Vec<u8>> {
    let listed = s3
        .list_objects_v2()
        .bucket(bucket)
        .send()
        .await
        .unwrap_or_else(|e| panic!("list {bucket}: {e:?}"));
    assert!(
        !listed.is_truncated().unwrap_or(false),
        "more than one page"
    );
    let mut out = std::collections::BTreeMap::new();
    for key in listed.contents().iter().filter_map(|o| o.key()) {
        out.insert(key.to_string(), s3_bytes(s3, bucket, key).await);
    }
    out
}
