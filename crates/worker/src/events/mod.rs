//! Events: what the workers tell the outside world when an image is done or failed and when a
//! gallery's grouping commits (`docs/schemas/event.schema.json`). One [`Event`] goes to every
//! configured target: the job's `callback` URL (an HTTP POST, signed), the SNS topic and the
//! EventBridge bus. Delivery never blocks or fails a job.
//!
//! # Outbox
//!
//! A job does not deliver anything itself: it writes the event into the outbox,
//! `huemn.event_outbox` (one document per event and target, `_id` = `{event_id}/{target}`), as a
//! step of recording its outcome, before its SQS message is deleted: the detection worker just
//! before `mark_done` (which stays its last write, so a shutdown cannot cut a done image's job
//! short after it; an `image.done` goes out only once the status says done, and is cancelled if
//! the image ends failed or deleted instead) or in `record_failure`; the grouping worker after
//! its run's writes (a job that dies before is
//! rerun and its new run records its own event). So a crash after the outcome never loses the
//! event: either the outbox write happened, or the message comes back and writes it. The
//! event id is derived from what
//! the event is about (image: gallery, image, object and model version; failure: the SQS message
//! id; grouping: gallery and run number), and the write is an upsert that only sets fields on
//! insert, so a redelivered job never duplicates an event nor resets its delivery state.
//! Receivers dedupe on `event_id` (delivery is at least once).
//!
//! A delivery task in every worker process ([`Events::spawn_delivery`]) drains the outbox: it
//! claims one due event at a time with a lease (`lease_until`, `lease_owner`, and one more
//! attempt counted at the claim, so attempts stay bounded even when workers die mid-delivery),
//! delivers it with a timeout, and settles it: `delivered`; `pending` again with the next
//! attempt after an exponential backoff; `dead` after the last attempt (or on an answer that
//! retrying cannot change: a 4xx other than 408/429, a redirect); `refused` when the callback is
//! not allowed ([`allow`]), without any request; `cancelled` when an `image.done`'s image ended
//! failed or deleted. Two workers never deliver the same event at
//! once (the claim is one atomic update), and events left by a dead process are picked up by
//! the next one once their lease runs out. A worker that drains (`--drain`) delivers what is
//! due before it exits (for at most the grace period); retries scheduled later wait for the
//! next worker process.
//!
//! # Signature
//!
//! A callback is `POST` with the event JSON as body and these headers:
//!
//! - `X-Facegroup-Event-Id`, `X-Facegroup-Event-Type`;
//! - `X-Facegroup-Timestamp`: Unix seconds of this attempt;
//! - `X-Facegroup-Signature: sha256=<hex>`: HMAC-SHA256 with key `FACEGROUP_CALLBACK_SECRET` of
//!   `<timestamp>.<body>` (the header's timestamp, a dot, the raw body bytes).
//!
//! A receiver recomputes the HMAC over the raw body it received, compares in constant time, and
//! rejects timestamps far from its clock (say 5 minutes) against replays ([`signature`] is the
//! reference). Any 2xx is delivered.
//!
//! SNS gets the same JSON as the message (attribute `event_type`, for subscription filters);
//! EventBridge as the detail of an entry with source `facegroup` and detail-type the event type.

pub mod allow;
pub mod config;
mod deliver;

use std::sync::Arc;

use mongodb::bson::{doc, DateTime, Document};
use mongodb::options::IndexOptions;
use mongodb::{Collection, IndexModel};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use config::{EventsConfig, Secret};

use crate::error::{JobError, StoreError};
use crate::jobs::{DetectionJob, GroupingJob};
use crate::mongo::{MongoStore, STATUS_DB};
use crate::sqs::Message;

pub const OUTBOX_COLLECTION: &str = "event_outbox";

/// The kind of an event (`type` in the JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventType {
    #[serde(rename = "image.done")]
    ImageDone,
    #[serde(rename = "image.failed")]
    ImageFailed,
    #[serde(rename = "gallery.grouped")]
    GalleryGrouped,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ImageDone => "image.done",
            Self::ImageFailed => "image.failed",
            Self::GalleryGrouped => "gallery.grouped",
        }
    }
}

/// Why an image failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// `facegroup_worker::ErrorClass` (`permanent`, ...).
    pub class: String,
    pub reason: String,
}

/// One event (`docs/schemas/event.schema.json`). Fields not of its type are absent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Stable under redelivery of the job: receivers dedupe on it.
    pub event_id: String,
    #[serde(rename = "type")]
    pub kind: EventType,
    /// When the outcome was recorded (RFC 3339, UTC, milliseconds).
    pub occurred_at: String,
    pub gallery_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    /// `image.done`: faces found in the image; `gallery.grouped`: faces grouped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub face_count: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_version: Option<String>,
    /// `image.failed` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    /// `gallery.grouped`: the committed run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_number: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// `gallery.grouped`: S3 key of the run's groups JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub person_count: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unassigned_count: Option<u64>,
}

/// `evt-` and 32 hex digits of SHA-256 over the parts (NUL-separated).
fn event_id(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    let digest = h.finalize();
    format!("evt-{}", hex::encode(&digest[..16]))
}

fn now_rfc3339() -> String {
    DateTime::now()
        .try_to_rfc3339_string()
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

impl Event {
    fn base(kind: EventType, id_parts: &[&str], gallery_id: &str) -> Self {
        let mut parts = vec![kind.as_str()];
        parts.extend_from_slice(id_parts);
        Self {
            event_id: event_id(&parts),
            kind,
            occurred_at: now_rfc3339(),
            gallery_id: gallery_id.to_string(),
            image_id: None,
            face_count: None,
            model_version: None,
            failure: None,
            run_number: None,
            run_id: None,
            groups_key: None,
            person_count: None,
            unassigned_count: None,
        }
    }

    /// An image done: its id is the same for every delivery of the same image, object and
    /// model version (a rerun of the same job re-records the same event).
    pub fn image_done(
        gallery_id: &str,
        image_id: &str,
        object: &str,
        model_version: &str,
        face_count: usize,
    ) -> Self {
        let mut e = Self::base(
            EventType::ImageDone,
            &[gallery_id, image_id, object, model_version],
            gallery_id,
        );
        e.image_id = Some(image_id.to_string());
        e.face_count = Some(face_count as u64);
        e.model_version = Some(model_version.to_string());
        e
    }

    /// An image failed for good; `message_id` (the SQS message's, stable under redelivery)
    /// tells failures of separate submissions apart.
    pub fn image_failed(
        gallery_id: &str,
        image_id: &str,
        message_id: &str,
        class: &str,
        reason: &str,
    ) -> Self {
        let mut e = Self::base(
            EventType::ImageFailed,
            &[gallery_id, image_id, message_id],
            gallery_id,
        );
        e.image_id = Some(image_id.to_string());
        e.failure = Some(Failure {
            class: class.to_string(),
            reason: reason.to_string(),
        });
        e
    }

    /// A gallery's grouping run committed (run numbers are never reused in a gallery).
    pub fn gallery_grouped(gallery_id: &str, run: GroupedRun<'_>) -> Self {
        let number = run.run_number.to_string();
        let mut e = Self::base(
            EventType::GalleryGrouped,
            &[gallery_id, &number],
            gallery_id,
        );
        e.run_number = Some(run.run_number);
        e.run_id = Some(run.run_id.to_string());
        e.groups_key = Some(run.groups_key.to_string());
        e.model_version = Some(run.model_version.to_string());
        e.face_count = Some(run.face_count as u64);
        e.person_count = Some(run.person_count as u64);
        e.unassigned_count = Some(run.unassigned_count as u64);
        e
    }
}

/// What a `gallery.grouped` event reports.
#[derive(Debug, Clone, Copy)]
pub struct GroupedRun<'a> {
    pub run_number: u64,
    pub run_id: &'a str,
    pub groups_key: &'a str,
    pub model_version: &'a str,
    pub face_count: usize,
    pub person_count: usize,
    pub unassigned_count: usize,
}

/// Where an outbox document goes (`target` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    Callback,
    Sns,
    EventBridge,
}

impl TargetKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Callback => "callback",
            Self::Sns => "sns",
            Self::EventBridge => "eventbridge",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "callback" => Some(Self::Callback),
            "sns" => Some(Self::Sns),
            "eventbridge" => Some(Self::EventBridge),
            _ => None,
        }
    }
}

/// Delivery states of an outbox document (`status` field).
pub mod status {
    pub const PENDING: &str = "pending";
    pub const DELIVERED: &str = "delivered";
    pub const DEAD: &str = "dead";
    pub const REFUSED: &str = "refused";
    /// An `image.done` whose image ended failed or deleted before the event went out.
    pub const CANCELLED: &str = "cancelled";
}

/// The events of one worker process: records into the outbox, and delivers from it. Cheap to
/// clone.
#[derive(Clone)]
pub struct Events {
    inner: Arc<Inner>,
}

struct Inner {
    outbox: Collection<Document>,
    /// The images' status documents (`image.done` waits for `done`).
    images: Collection<Document>,
    cfg: EventsConfig,
    sns: Option<aws_sdk_sns::Client>,
    eventbridge: Option<aws_sdk_eventbridge::Client>,
    /// Wakes the delivery task when this process records an event.
    wake: Notify,
    /// This process's name on its claims.
    owner: String,
    tls: std::sync::OnceLock<Result<Arc<tokio_rustls::rustls::ClientConfig>, String>>,
}

impl Events {
    /// Events on `mongo`'s database; the SNS / EventBridge clients are built from `sdk` only
    /// when a topic / bus is configured.
    pub fn new(mongo: &MongoStore, cfg: EventsConfig, sdk: &aws_config::SdkConfig) -> Self {
        let outbox = mongo
            .images()
            .client()
            .database(STATUS_DB)
            .collection(OUTBOX_COLLECTION);
        let sns = cfg
            .events_sns_topic_arn
            .as_ref()
            .map(|_| aws_sdk_sns::Client::new(sdk));
        let eventbridge = cfg
            .events_bus_name
            .as_ref()
            .map(|_| aws_sdk_eventbridge::Client::new(sdk));
        let owner = format!(
            "{}-{}-{}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".into()),
            std::process::id(),
            crate::now_ms()
        );
        Self {
            inner: Arc::new(Inner {
                outbox,
                images: mongo.images().clone(),
                cfg,
                sns,
                eventbridge,
                wake: Notify::new(),
                owner,
                tls: std::sync::OnceLock::new(),
            }),
        }
    }

    pub fn outbox(&self) -> &Collection<Document> {
        &self.inner.outbox
    }

    pub fn config(&self) -> &EventsConfig {
        &self.inner.cfg
    }

    /// Creates the outbox's index (idempotent): the delivery task's claim looks up due pending
    /// events by status and time.
    pub async fn ensure_indexes(&self) -> Result<(), StoreError> {
        self.inner
            .outbox
            .create_index(
                IndexModel::builder()
                    .keys(doc! {"status": 1, "next_attempt_at": 1})
                    .options(IndexOptions::builder().name("due".to_string()).build())
                    .build(),
            )
            .await?;
        Ok(())
    }

    /// Writes `event` into the outbox for each configured target: the `callback` URL when the
    /// job has one (refused at once when the allow-list rejects it), the SNS topic, the
    /// EventBridge bus. Idempotent (see the module docs). An error is the store's: the caller's
    /// job fails temporarily and records the event on its retry.
    pub async fn record(&self, event: &Event, callback: Option<&str>) -> Result<(), StoreError> {
        let body =
            serde_json::to_string(event).map_err(|e| StoreError::Malformed(e.to_string()))?;
        let cfg = &self.inner.cfg;
        let mut targets: Vec<(TargetKind, Option<&str>)> = Vec::new();
        if let Some(url) = callback.filter(|u| !u.trim().is_empty()) {
            targets.push((TargetKind::Callback, Some(url)));
        }
        if cfg.events_sns_topic_arn.is_some() {
            targets.push((TargetKind::Sns, None));
        }
        if cfg.events_bus_name.is_some() {
            targets.push((TargetKind::EventBridge, None));
        }
        if targets.is_empty() {
            return Ok(());
        }
        let now = DateTime::now();
        for (target, url) in targets {
            let mut insert = doc! {
                "event_id": &event.event_id,
                "type": event.kind.as_str(),
                "gallery_id": &event.gallery_id,
                "target": target.as_str(),
                "body": &body,
                "attempts": 0,
                "next_attempt_at": now,
                "created_at": now,
                "updated_at": now,
            };
            if let Some(image) = &event.image_id {
                insert.insert("image_id", image);
            }
            match url.map(|u| (u, allow::check_url(cfg, u))) {
                Some((u, Err(why))) => {
                    warn!(event_id = %event.event_id, reason = %why, "callback refused; not delivered");
                    insert.insert("url", u);
                    insert.insert("status", status::REFUSED);
                    insert.insert("last_error", why);
                }
                Some((u, Ok(_))) => {
                    insert.insert("url", u);
                    insert.insert("status", status::PENDING);
                }
                None => {
                    insert.insert("status", status::PENDING);
                }
            }
            let id = format!("{}/{}", event.event_id, target.as_str());
            self.inner
                .outbox
                .update_one(doc! {"_id": &id}, doc! {"$setOnInsert": insert})
                .upsert(true)
                .await?;
        }
        self.inner.wake.notify_one();
        Ok(())
    }

    /// Starts the delivery task; it runs until `shutdown` (an attempt in flight is abandoned,
    /// and its lease lets the next worker retry it).
    pub fn spawn_delivery(&self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let events = self.clone();
        tokio::spawn(async move { events.deliver_until(shutdown).await })
    }

    async fn deliver_until(&self, shutdown: CancellationToken) {
        info!(config = %self.inner.cfg, "event delivery started");
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let worked = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = self.deliver_next() => r,
            };
            match worked {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => warn!(error = %e, "event outbox unavailable; retrying"),
            }
            // Nothing due (or the store failed): wait for a new event, the poll, or the end.
            // The earliest retry may come sooner than the poll, so wait at most until then.
            let wait = match self.next_due_in().await {
                Ok(Some(d)) => d.min(self.inner.cfg.poll()),
                _ => self.inner.cfg.poll(),
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.inner.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Delivers due events until none is due or `limit` has passed (a draining worker's last
    /// step; events waiting for a later retry stay for the next worker process).
    pub async fn flush(&self, limit: std::time::Duration) {
        let drained = tokio::time::timeout(limit, async {
            loop {
                match self.deliver_next().await {
                    Ok(true) => continue,
                    Ok(false) => return,
                    Err(e) => {
                        warn!(error = %e, "event outbox unavailable; pending events stay");
                        return;
                    }
                }
            }
        })
        .await;
        if drained.is_err() {
            warn!(
                ?limit,
                "events still due at exit stay in the outbox for the next worker"
            );
        }
    }

    /// How long until the earliest pending event is due (`None`: none pending).
    async fn next_due_in(&self) -> Result<Option<std::time::Duration>, StoreError> {
        let next = self
            .inner
            .outbox
            .find_one(doc! {"status": status::PENDING})
            .sort(doc! {"next_attempt_at": 1})
            .await?;
        let Some(next) = next else { return Ok(None) };
        let at = next
            .get_datetime("next_attempt_at")
            .map(|d| d.timestamp_millis())
            .unwrap_or(0);
        let lease = next
            .get_datetime("lease_until")
            .map(|d| d.timestamp_millis())
            .unwrap_or(0);
        let due = at.max(lease) - DateTime::now().timestamp_millis();
        Ok(Some(std::time::Duration::from_millis(
            due.clamp(10, i64::MAX) as u64,
        )))
    }

    /// Claims one due event, delivers it and records the outcome. `Ok(false)`: nothing was due.
    pub async fn deliver_next(&self) -> Result<bool, StoreError> {
        let now = DateTime::now();
        let lease_until = DateTime::from_millis(
            now.timestamp_millis()
                .saturating_add(self.inner.cfg.lease().as_millis() as i64),
        );
        let claimed = self
            .inner
            .outbox
            .find_one_and_update(
                doc! {
                    "status": status::PENDING,
                    "next_attempt_at": {"$lte": now},
                    "$or": [{"lease_until": null}, {"lease_until": {"$lt": now}}],
                },
                doc! {
                    "$set": {"lease_until": lease_until, "lease_owner": &self.inner.owner,
                             "updated_at": now},
                    "$inc": {"attempts": 1},
                },
            )
            .sort(doc! {"next_attempt_at": 1})
            .return_document(mongodb::options::ReturnDocument::After)
            .await?;
        let Some(doc) = claimed else {
            return Ok(false);
        };
        let id = doc
            .get_str("_id")
            .map_err(|_| StoreError::Malformed(format!("outbox entry {:?}", doc.get("_id"))))?
            .to_string();
        let attempts = doc.get_i32("attempts").unwrap_or(1).max(1) as u32;
        let outcome = self.attempt(&doc).await;
        self.settle(&id, attempts, outcome).await?;
        Ok(true)
    }

    /// Writes the outcome of the claimed attempt, only while this worker still holds the claim.
    async fn settle(&self, id: &str, attempts: u32, outcome: Attempt) -> Result<(), StoreError> {
        let now = DateTime::now();
        let cfg = &self.inner.cfg;
        let (state, error, next) = match outcome {
            Attempt::Delivered => (status::DELIVERED, None, None),
            Attempt::Refused(why) => (status::REFUSED, Some(why), None),
            Attempt::Cancelled(why) => (status::CANCELLED, Some(why), None),
            Attempt::Dead(why) => (status::DEAD, Some(why), None),
            Attempt::Retry(why) if attempts >= cfg.events_max_attempts => (
                status::DEAD,
                Some(format!("{why} (after {attempts} attempts)")),
                None,
            ),
            Attempt::Retry(why) => {
                let delay = cfg.backoff(attempts);
                let at = DateTime::from_millis(
                    now.timestamp_millis()
                        .saturating_add(delay.as_millis() as i64),
                );
                (status::PENDING, Some(why), Some(at))
            }
        };
        let mut set = doc! {"status": state, "updated_at": now};
        match &error {
            Some(e) => {
                set.insert("last_error", e);
            }
            None => {
                set.insert("delivered_at", now);
            }
        }
        if let Some(at) = next {
            set.insert("next_attempt_at", at);
        }
        match (state, &error) {
            (status::DELIVERED, _) => info!(outbox_id = id, attempts, "event delivered"),
            (status::PENDING, Some(e)) => {
                warn!(outbox_id = id, attempts, error = %e, "event delivery failed; will retry")
            }
            (_, e) => {
                warn!(outbox_id = id, attempts, status = state, error = ?e, "event not delivered")
            }
        }
        self.inner
            .outbox
            .update_one(
                doc! {"_id": id, "lease_owner": &self.inner.owner},
                doc! {"$set": set, "$unset": {"lease_until": "", "lease_owner": ""}},
            )
            .await?;
        Ok(())
    }

    /// One delivery attempt of a claimed outbox document.
    async fn attempt(&self, doc: &Document) -> Attempt {
        let Some(body) = doc.get_str("body").ok() else {
            return Attempt::Dead("outbox entry has no body".into());
        };
        let target = doc.get_str("target").ok().and_then(TargetKind::parse);
        let event_type = doc.get_str("type").unwrap_or("unknown");
        let event_id = doc.get_str("event_id").unwrap_or("unknown");
        let cfg = &self.inner.cfg;
        if event_type == EventType::ImageDone.as_str() {
            if let Some(not_yet) = self.image_done_yet(doc).await {
                return not_yet;
            }
        }
        match target {
            Some(TargetKind::Callback) => {
                let Some(url) = doc.get_str("url").ok() else {
                    return Attempt::Dead("callback entry has no url".into());
                };
                deliver::post(self, url, event_id, event_type, body).await
            }
            Some(TargetKind::Sns) => match (&self.inner.sns, &cfg.events_sns_topic_arn) {
                (Some(sns), Some(topic)) => deliver::sns(sns, topic, event_type, body).await,
                _ => Attempt::Retry("no SNS topic configured in this worker".into()),
            },
            Some(TargetKind::EventBridge) => {
                match (&self.inner.eventbridge, &cfg.events_bus_name) {
                    (Some(eb), Some(bus)) => deliver::eventbridge(eb, bus, event_type, body).await,
                    _ => Attempt::Retry("no EventBridge bus configured in this worker".into()),
                }
            }
            None => Attempt::Dead(format!("unknown target {:?}", doc.get("target"))),
        }
    }
}

/// The workers' calls, one per outcome (each an idempotent outbox write, see the module docs).
impl Events {
    /// Image done: recorded just before `mark_done` (which stays the job's last write); the
    /// delivery waits for the status to say done.
    pub async fn image_done(
        &self,
        job: &DetectionJob,
        model_version: &str,
        face_count: usize,
    ) -> Result<(), StoreError> {
        let object = format!("{}/{}", job.bucket, job.key);
        let event = Event::image_done(
            &job.gallery_id,
            &job.image_id,
            &object,
            model_version,
            face_count,
        );
        self.record(&event, job.callback.as_deref()).await
    }

    /// Image failed for good: recorded by `record_failure`, before the message is deleted. The
    /// callback is read from the raw body (the job may not have parsed).
    pub async fn image_failed(
        &self,
        msg: &Message,
        gallery_id: &str,
        image_id: &str,
        err: &JobError,
    ) -> Result<(), StoreError> {
        let event = Event::image_failed(
            gallery_id,
            image_id,
            &msg.message_id,
            err.class.as_str(),
            &err.reason,
        );
        self.record(&event, callback_of(&msg.body).as_deref()).await
    }

    /// A gallery's grouping run committed: recorded once the run's writes are done, before the
    /// message is deleted, to the grouping job's `callback`.
    pub async fn gallery_grouped(
        &self,
        job: &GroupingJob,
        run: GroupedRun<'_>,
    ) -> Result<(), StoreError> {
        let event = Event::gallery_grouped(&job.gallery_id, run);
        self.record(&event, job.callback.as_deref()).await
    }
}

/// The `callback` string of a message body, if it has one (whatever else is wrong with it).
pub fn callback_of(body: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    Some(v.get("callback")?.as_str()?.to_string())
}

impl Events {
    /// `None` when the `image.done` of `doc` may go out: its image's status says done. The job
    /// records the event just before `mark_done`, so a delivery that claims it at once usually
    /// finds the status a moment behind: it waits up to [`STATUS_WAIT`] for it. Still pending
    /// after that, the job died in between (its redelivery will finish it): retried later.
    /// Failed, deleted or gone: the event no longer holds and is cancelled.
    async fn image_done_yet(&self, doc: &Document) -> Option<Attempt> {
        let (Ok(gallery), Ok(image)) = (doc.get_str("gallery_id"), doc.get_str("image_id")) else {
            return Some(Attempt::Dead(
                "image event without gallery or image id".into(),
            ));
        };
        let key = crate::mongo::image_key(gallery, image);
        let deadline = tokio::time::Instant::now() + STATUS_WAIT;
        loop {
            let found = match self.inner.images.find_one(doc! {"_id": &key}).await {
                Ok(found) => found,
                Err(e) => return Some(Attempt::Retry(format!("reading the image status: {e}"))),
            };
            let state = found
                .as_ref()
                .and_then(|d| d.get_str("status").ok())
                .map(str::to_string);
            match state.as_deref() {
                Some("done") => return None,
                Some("pending") if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                Some("pending") => {
                    return Some(Attempt::Retry("the image is not marked done yet".into()))
                }
                other => {
                    return Some(Attempt::Cancelled(format!(
                        "the image is {} now, not done",
                        other.unwrap_or("gone")
                    )))
                }
            }
        }
    }
}

/// How long a delivery waits for an image's status to turn done (see `image_done_yet`).
const STATUS_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// How one attempt ended.
#[derive(Debug)]
enum Attempt {
    Delivered,
    /// Not allowed (see [`allow`]): no request was made, and none will be.
    Refused(String),
    /// The event no longer holds (its image failed or was deleted before it went out).
    Cancelled(String),
    /// Retrying cannot help (a 4xx answer, a redirect, a malformed entry).
    Dead(String),
    /// A timeout, a connection error, a 5xx, 408 or 429: tried again after the backoff.
    Retry(String),
}

/// The `X-Facegroup-Signature` value of `body` sent at Unix time `timestamp`:
/// `sha256=` and the hex HMAC-SHA256 of `{timestamp}.{body}` with `secret`.
pub fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Checks a received callback the way a receiver should: the signature over the raw body with
/// the shared secret, compared in constant time.
pub fn verify_signature(secret: &[u8], timestamp: &str, body: &[u8], header: &str) -> bool {
    use hmac::{KeyInit, Mac};
    let Some(hex_sig) = header.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(sig) = hex::decode(hex_sig) else {
        return false;
    };
    let Ok(mut mac) = hmac::Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_are_stable_and_tell_outcomes_apart() {
        let a = Event::image_done("g", "i", "b/k.jpg", "det+emb", 2);
        let b = Event::image_done("g", "i", "b/k.jpg", "det+emb", 2);
        assert_eq!(a.event_id, b.event_id);
        assert_ne!(
            a.event_id,
            Event::image_done("g", "i", "b/other.jpg", "det+emb", 2).event_id
        );
        assert_ne!(
            a.event_id,
            Event::image_failed("g", "i", "m1", "permanent", "x").event_id
        );
        let json = serde_json::to_value(&a).expect("json");
        assert_eq!(json["type"], "image.done");
        assert_eq!(json["face_count"], 2);
        assert!(json.get("failure").is_none());
    }

    #[test]
    fn signatures_verify_and_detect_tampering() {
        let sig = signature(b"k", 1_700_000_000, b"{\"a\":1}");
        assert!(sig.starts_with("sha256="));
        assert!(verify_signature(b"k", "1700000000", b"{\"a\":1}", &sig));
        assert!(!verify_signature(b"k", "1700000001", b"{\"a\":1}", &sig));
        assert!(!verify_signature(b"k", "1700000000", b"{\"a\":2}", &sig));
        assert!(!verify_signature(
            b"other",
            "1700000000",
            b"{\"a\":1}",
            &sig
        ));
    }
}
