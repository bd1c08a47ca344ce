//! S3 store: size-limited reads of input images, JSON and thumbnail writes of results, and the
//! deletions of the erasure jobs. A read answered
//! 404 is [`StoreError::NotFound`], one answered 403 is [`StoreError::Denied`]: both permanent
//! for the input (retrying the same request cannot help), unlike network or 5xx trouble.

use aws_sdk_s3::error::{DisplayErrorContext, SdkError};
use aws_sdk_s3::operation::get_object::GetObjectError;
use aws_sdk_s3::primitives::ByteStream;
use serde::Serialize;

use crate::error::StoreError;

/// Reads and writes objects; results go to `bucket`.
#[derive(Clone)]
pub struct S3Store {
    client: aws_sdk_s3::Client,
    bucket: String,
    max_object_bytes: u64,
}

impl S3Store {
    pub fn new(client: aws_sdk_s3::Client, bucket: String, max_object_bytes: u64) -> Self {
        Self {
            client,
            bucket,
            max_object_bytes,
        }
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    pub fn client(&self) -> &aws_sdk_s3::Client {
        &self.client
    }

    /// Reads `s3://bucket/key`, refusing objects over the size limit before and while reading
    /// (a missing or lying Content-Length cannot make the worker buffer an unbounded body).
    pub async fn get(&self, bucket: &str, key: &str) -> Result<Vec<u8>, StoreError> {
        let out = match self
            .client
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => out,
            Err(SdkError::ServiceError(e)) if is_not_found(e.err()) => {
                return Err(StoreError::NotFound {
                    bucket: bucket.into(),
                    key: key.into(),
                })
            }
            Err(SdkError::ServiceError(e)) if is_denied(e.err(), e.raw().status().as_u16()) => {
                return Err(StoreError::Denied {
                    bucket: bucket.into(),
                    key: key.into(),
                })
            }
            Err(e) => return Err(StoreError::S3(DisplayErrorContext(&e).to_string())),
        };
        let too_large = |size| StoreError::TooLarge {
            bucket: bucket.into(),
            key: key.into(),
            size,
            max: self.max_object_bytes,
        };
        let declared = out.content_length().unwrap_or(0).max(0) as u64;
        if declared > self.max_object_bytes {
            return Err(too_large(declared));
        }
        let mut body = out.body;
        let mut bytes = Vec::with_capacity(declared as usize);
        while let Some(chunk) = body
            .try_next()
            .await
            .map_err(|e| StoreError::S3(format!("reading s3://{bucket}/{key}: {e}")))?
        {
            bytes.extend_from_slice(&chunk);
            if bytes.len() as u64 > self.max_object_bytes {
                return Err(too_large(bytes.len() as u64));
            }
        }
        Ok(bytes)
    }

    /// Reads a JSON object from the results bucket; `None` when it does not exist.
    pub async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        match self.get(&self.bucket, key).await {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| StoreError::Malformed(format!("s3://{}/{key}: {e}", self.bucket))),
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes `value` as JSON to `s3://bucket/key` (a whole-object PUT, so readers never see a
    /// partial result).
    pub async fn put_json<T: Serialize>(&self, key: &str, value: &T) -> Result<(), StoreError> {
        let body = serde_json::to_vec_pretty(value)
            .map_err(|e| StoreError::Malformed(format!("serialising {key}: {e}")))?;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type("application/json")
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| StoreError::S3(DisplayErrorContext(&e).to_string()))?;
        Ok(())
    }
}

impl S3Store {
    /// Writes `body` to `s3://bucket/key` (a whole-object PUT: writing the same bytes again
    /// changes nothing a reader can see).
    pub async fn put_bytes(
        &self,
        key: &str,
        body: Vec<u8>,
        content_type: &str,
    ) -> Result<(), StoreError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| StoreError::S3(DisplayErrorContext(&e).to_string()))?;
        Ok(())
    }

    /// Every key of the results bucket under `prefix` (ListObjectsV2, all pages).
    pub async fn list_keys(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        let mut keys = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| StoreError::S3(DisplayErrorContext(&e).to_string()))?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_string)),
            );
        }
        Ok(keys)
    }

    /// Deletes every object under `prefix`; returns how many there were.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<usize, StoreError> {
        let keys = self.list_keys(prefix).await?;
        self.delete_keys(&keys).await?;
        Ok(keys.len())
    }

    /// Deletes `keys` from the results bucket in DeleteObjects batches of 1,000. A key that
    /// does not exist is no error (S3 deletes are idempotent), so a redelivered deletion
    /// succeeds again.
    pub async fn delete_keys(&self, keys: &[String]) -> Result<(), StoreError> {
        use aws_sdk_s3::types::{Delete, ObjectIdentifier};
        for chunk in keys.chunks(DELETE_BATCH) {
            let objects = chunk
                .iter()
                .map(|k| ObjectIdentifier::builder().key(k).build())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| StoreError::S3(format!("delete request: {e}")))?;
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(|e| StoreError::S3(format!("delete request: {e}")))?;
            let out = self
                .client
                .delete_objects()
                .bucket(&self.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| StoreError::S3(DisplayErrorContext(&e).to_string()))?;
            if let Some(e) = out.errors().first() {
                return Err(StoreError::S3(format!(
                    "deleting s3://{}/{}: {} {}",
                    self.bucket,
                    e.key().unwrap_or_default(),
                    e.code().unwrap_or_default(),
                    e.message().unwrap_or_default()
                )));
            }
        }
        Ok(())
    }
}

/// Most keys in one DeleteObjects request (S3's limit).
const DELETE_BATCH: usize = 1000;

fn is_denied(e: &GetObjectError, status: u16) -> bool {
    use aws_sdk_s3::error::ProvideErrorMetadata;
    status == 403 || matches!(e.code(), Some("AccessDenied" | "Forbidden"))
}

fn is_not_found(e: &GetObjectError) -> bool {
    use aws_sdk_s3::error::ProvideErrorMetadata;
    e.is_no_such_key() || matches!(e.code(), Some("NoSuchKey" | "NotFound" | "NoSuchBucket"))
}
