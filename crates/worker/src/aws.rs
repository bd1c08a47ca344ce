//! AWS SDK set-up: one shared configuration with a rustls + ring HTTPS client (the SDK's default
//! client would pull in aws-lc-sys, which alone adds minutes to a cold build). Region, endpoint
//! overrides (`AWS_ENDPOINT_URL`, for LocalStack/moto) and credentials come from the standard
//! AWS environment and credential chain.

use aws_config::{BehaviorVersion, SdkConfig};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use aws_smithy_http_client::Builder;

/// Loads the shared SDK configuration from the environment.
pub async fn sdk_config() -> SdkConfig {
    loader().load().await
}

/// The SDK's default loader with the rustls + ring client (tests add endpoints and
/// credentials to it).
pub fn loader() -> aws_config::ConfigLoader {
    let http = Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https();
    aws_config::defaults(BehaviorVersion::latest()).http_client(http)
}

/// An SQS client.
pub fn sqs_client(conf: &SdkConfig) -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::new(conf)
}

/// An S3 client; `path_style` addresses buckets as `endpoint/bucket` (moto, LocalStack).
pub fn s3_client(conf: &SdkConfig, path_style: bool) -> aws_sdk_s3::Client {
    let s3_conf = aws_sdk_s3::config::Builder::from(conf)
        .force_path_style(path_style)
        .build();
    aws_sdk_s3::Client::from_conf(s3_conf)
}
