//! Events against real servers: the outbox in SecantusDB, callbacks to a local HTTP receiver
//! (signature verified, retried after a 500, never sent to a host that is not allowed, pending
//! while the receiver is down and delivered once it is up), two delivery tasks sharing one
//! outbox, and SNS (moto, with an SQS queue subscribed to the topic) and EventBridge (a rule on
//! the bus routing to an SQS queue) targets.

use std::time::Duration;

use facegroup_worker::events::{self, status, Event, Events, EventsConfig, GroupedRun, Secret};
use facegroup_worker::mongo::MongoStore;
use mongodb::bson::{doc, Document};
use tokio_util::sync::CancellationToken;

use facegroup_testkit::*;

const SECRET: &str = "test-signing-secret";
const LIMIT: Duration = Duration::from_secs(60);

/// Callbacks to 127.0.0.1 over plain http allowed (the receiver), quick retries.
fn config() -> EventsConfig {
    EventsConfig {
        callback_allowed_hosts: vec!["127.0.0.1".into()],
        callback_allow_loopback: true,
        callback_allow_http: true,
        callback_secret: Some(Secret::new(SECRET)),
        callback_timeout_secs: 5,
        events_max_attempts: 5,
        events_backoff_ms: 50,
        events_backoff_max_secs: 1,
        events_lease_secs: 30,
        events_poll_secs: 1,
        events_sns_topic_arn: None,
        events_bus_name: None,
    }
}

struct World {
    _mongo: Server,
    db: mongodb::Client,
    store: MongoStore,
    shutdown: CancellationToken,
}

impl World {
    async fn start() -> Self {
        let mongo = start_mongo();
        let db = mongodb::Client::with_uri_str(mongo_uri(mongo.port))
            .await
            .expect("mongo client");
        let store = MongoStore::from_client(&db);
        Self {
            _mongo: mongo,
            db,
            store,
            shutdown: CancellationToken::new(),
        }
    }

    /// Events with `cfg` on this world's outbox, delivering until the world drops.
    async fn events(&self, cfg: EventsConfig, sdk: &aws_config::SdkConfig) -> Events {
        let events = Events::new(&self.store, cfg, sdk);
        events.ensure_indexes().await.expect("indexes");
        events.spawn_delivery(self.shutdown.clone());
        events
    }

    /// Sets image `image`'s status document to `status` (what the detection worker writes).
    async fn image_is(&self, image: &str, status: &str) {
        self.db
            .database(facegroup_worker::mongo::STATUS_DB)
            .collection::<Document>(facegroup_worker::mongo::IMAGES_COLLECTION)
            .update_one(
                doc! {"_id": facegroup_worker::mongo::image_key("g1", image)},
                doc! {"$set": {"status": status, "gallery_id": "g1", "image_id": image}},
            )
            .upsert(true)
            .await
            .expect("image status");
    }

    async fn outbox(&self, filter: Document) -> Vec<Document> {
        use futures::TryStreamExt;
        self.db
            .database(facegroup_worker::mongo::STATUS_DB)
            .collection::<Document>(events::OUTBOX_COLLECTION)
            .find(filter)
            .await
            .expect("find")
            .try_collect()
            .await
            .expect("read")
    }

    /// The single outbox entry of `event_id`'s callback.
    async fn callback_entry(&self, event_id: &str) -> Document {
        let mut found = self
            .outbox(doc! {"event_id": event_id, "target": "callback"})
            .await;
        assert_eq!(found.len(), 1, "one callback entry for {event_id}");
        found.remove(0)
    }

    async fn wait_status(&self, event_id: &str, want: &str) -> Document {
        wait_for(&format!("{event_id} {want}"), LIMIT, || async {
            self.callback_entry(event_id).await.get_str("status") == Ok(want)
        })
        .await;
        self.callback_entry(event_id).await
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn no_aws() -> aws_config::SdkConfig {
    aws_config::SdkConfig::builder().build()
}

fn done_event(image: &str) -> Event {
    Event::image_done("g1", image, "photos/uploads/x.jpg", "det+emb", 3)
}

/// The request's signature verifies with the shared secret over its timestamp and raw body.
fn assert_signed(r: &Received) {
    let ts = r.header("x-facegroup-timestamp").expect("timestamp header");
    let sig = r.header("x-facegroup-signature").expect("signature header");
    assert!(
        events::verify_signature(SECRET.as_bytes(), ts, &r.body, sig),
        "signature {sig} does not verify"
    );
    assert!(
        !events::verify_signature(b"wrong secret", ts, &r.body, sig),
        "a wrong secret verifies"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_is_signed_and_retried_after_a_500() {
    let world = World::start().await;
    let receiver = HttpReceiver::start(0, &[500]).await;
    let events = world.events(config(), &no_aws()).await;
    world.image_is("a.jpg", "done").await;
    world.image_is("b.jpg", "done").await;
    let event = done_event("a.jpg");
    events
        .record(&event, Some(&receiver.url("/hooks/facegroup?k=1")))
        .await
        .expect("record");

    let entry = world.wait_status(&event.event_id, status::DELIVERED).await;
    assert_eq!(entry.get_i32("attempts"), Ok(2), "{entry:?}");
    let got = receiver.requests();
    assert_eq!(got.len(), 2, "one 500, then the 200");
    for r in &got {
        assert_eq!(
            (r.method.as_str(), r.path.as_str()),
            ("POST", "/hooks/facegroup?k=1")
        );
        assert_eq!(
            r.header("x-facegroup-event-id"),
            Some(event.event_id.as_str())
        );
        assert_eq!(r.header("x-facegroup-event-type"), Some("image.done"));
        assert_signed(r);
        let body: Event = serde_json::from_slice(&r.body).expect("event JSON");
        assert_eq!(body, event);
    }

    // A redelivered job records the same event again: nothing new is written or sent.
    events
        .record(
            &done_event("a.jpg"),
            Some(&receiver.url("/hooks/facegroup?k=1")),
        )
        .await
        .expect("record again");
    assert_eq!(
        world.outbox(doc! {"event_id": &event.event_id}).await.len(),
        1
    );
    // A later event goes through after it, so anything the repeat caused would have been sent.
    let later = done_event("b.jpg");
    events
        .record(&later, Some(&receiver.url("/")))
        .await
        .expect("record");
    world.wait_status(&later.event_id, status::DELIVERED).await;
    assert_eq!(
        world
            .callback_entry(&event.event_id)
            .await
            .get_str("status"),
        Ok("delivered")
    );
    assert_eq!(receiver.requests().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_to_a_host_not_allowed_is_never_attempted() {
    let world = World::start().await;
    let receiver = HttpReceiver::start(0, &[]).await;
    let port = receiver.addr.port();
    // `localhost` is allowed by name but resolves to loopback, which this config does not
    // allow: refused at delivery, after the lookup, without a request.
    let mut cfg = config();
    cfg.callback_allowed_hosts = vec!["localhost".into(), "169.254.169.254".into()];
    cfg.callback_allow_loopback = false;
    let events = world.events(cfg, &no_aws()).await;

    let cases = [
        ("not-listed.jpg", format!("http://127.0.0.1:{port}/")),
        (
            "metadata.jpg",
            "http://169.254.169.254/latest/meta-data/".to_string(),
        ),
        ("rebinding.jpg", format!("http://localhost:{port}/")),
    ];
    for (image, url) in &cases {
        world.image_is(image, "done").await;
        let e = done_event(image);
        events.record(&e, Some(url)).await.expect("record");
        let entry = world.wait_status(&e.event_id, status::REFUSED).await;
        assert!(entry.get_str("last_error").is_ok(), "{entry:?}");
    }
    assert!(receiver.requests().is_empty(), "{:?}", receiver.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_receiver_is_down_the_event_waits_then_arrives() {
    let world = World::start().await;
    let port = free_port();
    let mut cfg = config();
    cfg.events_max_attempts = 100;
    let events = world.events(cfg, &no_aws()).await;
    let event = Event::image_failed("g1", "c.jpg", "msg-1", "permanent", "not an image");
    events
        .record(&event, Some(&format!("http://127.0.0.1:{port}/cb")))
        .await
        .expect("record");

    // Nothing listens: attempts are counted, the event stays pending with the error.
    wait_for("two failed attempts", LIMIT, || async {
        let e = world.callback_entry(&event.event_id).await;
        e.get_str("status") == Ok(status::PENDING) && e.get_i32("attempts").unwrap_or(0) >= 2
    })
    .await;
    let entry = world.callback_entry(&event.event_id).await;
    assert!(entry.get_str("last_error").is_ok(), "{entry:?}");

    let receiver = HttpReceiver::start(port, &[]).await;
    world.wait_status(&event.event_id, status::DELIVERED).await;
    let got = receiver.requests();
    assert_eq!(got.len(), 1);
    assert_signed(&got[0]);
    let body: serde_json::Value = serde_json::from_slice(&got[0].body).expect("json");
    assert_eq!(body["type"], "image.failed");
    assert_eq!(body["failure"]["reason"], "not an image");
}

/// The detection worker records `image.done` just before it marks the image done: the event
/// waits for the status, and is cancelled when the image ends deleted instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_done_goes_out_once_the_status_says_done() {
    let world = World::start().await;
    let receiver = HttpReceiver::start(0, &[]).await;
    let events = world.events(config(), &no_aws()).await;
    world.image_is("slow.jpg", "pending").await;
    world.image_is("gone.jpg", "pending").await;
    let slow = done_event("slow.jpg");
    let gone = done_event("gone.jpg");
    events
        .record(&slow, Some(&receiver.url("/")))
        .await
        .expect("record");
    events
        .record(&gone, Some(&receiver.url("/")))
        .await
        .expect("record");

    // Still pending after the delivery's wait: retried later, nothing sent.
    wait_for("a retry while the image is pending", LIMIT, || async {
        let e = world.callback_entry(&slow.event_id).await;
        e.get_str("status") == Ok(status::PENDING) && e.get_i32("attempts").unwrap_or(0) >= 1
    })
    .await;
    assert!(receiver.requests().is_empty());

    world.image_is("gone.jpg", "deleted").await;
    world.wait_status(&gone.event_id, status::CANCELLED).await;
    world.image_is("slow.jpg", "done").await;
    world.wait_status(&slow.event_id, status::DELIVERED).await;
    let got = receiver.requests();
    assert_eq!(got.len(), 1, "only the done image's event");
    assert_eq!(
        got[0].header("x-facegroup-event-id"),
        Some(slow.event_id.as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_delivery_tasks_send_each_event_once() {
    let world = World::start().await;
    let receiver = HttpReceiver::start(0, &[]).await;
    let a = world.events(config(), &no_aws()).await;
    let b = world.events(config(), &no_aws()).await;
    let mut ids = Vec::new();
    for i in 0..12 {
        world.image_is(&format!("{i}.jpg"), "done").await;
        let e = done_event(&format!("{i}.jpg"));
        let recorder = if i % 2 == 0 { &a } else { &b };
        recorder
            .record(&e, Some(&receiver.url("/")))
            .await
            .expect("record");
        ids.push(e.event_id);
    }
    for id in &ids {
        world.wait_status(id, status::DELIVERED).await;
    }
    let mut sent: Vec<String> = receiver
        .requests()
        .iter()
        .filter_map(|r| r.header("x-facegroup-event-id").map(str::to_string))
        .collect();
    sent.sort();
    ids.sort();
    assert_eq!(sent, ids, "every event exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_published_to_sns_and_eventbridge() {
    let world = World::start().await;
    let moto = start_moto();
    let sdk = sdk_config(facegroup_worker::aws::loader(), &moto).await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let sns = aws_sdk_sns::Client::new(&sdk);
    let eb = aws_sdk_eventbridge::Client::new(&sdk);

    let topic = sns
        .create_topic()
        .name("facegroup-events")
        .send()
        .await
        .expect("create topic")
        .topic_arn
        .expect("topic ARN");
    let (queue, _) = create_queue(&sqs, "events-from-sns", 30, None).await;
    let sns_queue_arn = queue_arn(&sqs, &queue).await;
    sns.subscribe()
        .topic_arn(&topic)
        .protocol("sqs")
        .endpoint(&sns_queue_arn)
        .send()
        .await
        .expect("subscribe");
    eb.create_event_bus()
        .name("facegroup")
        .send()
        .await
        .expect("create bus");
    // A rule on the bus routes facegroup's events to a second queue.
    let (bus_queue, _) = create_queue(&sqs, "events-from-bus", 30, None).await;
    let bus_queue_arn = queue_arn(&sqs, &bus_queue).await;
    eb.put_rule()
        .name("to-queue")
        .event_bus_name("facegroup")
        .event_pattern(r#"{"source": ["facegroup"]}"#)
        .send()
        .await
        .expect("put rule");
    eb.put_targets()
        .rule("to-queue")
        .event_bus_name("facegroup")
        .targets(
            aws_sdk_eventbridge::types::Target::builder()
                .id("queue")
                .arn(&bus_queue_arn)
                .build()
                .expect("target"),
        )
        .send()
        .await
        .expect("put targets");

    let mut cfg = config();
    cfg.events_sns_topic_arn = Some(topic.clone());
    cfg.events_bus_name = Some("facegroup".into());
    let events = world.events(cfg, &sdk).await;
    let event = Event::gallery_grouped(
        "g1",
        GroupedRun {
            run_number: 4,
            run_id: "run-0000000004",
            groups_key: "groups/g1/run-0000000004.json",
            model_version: "det+emb",
            face_count: 10,
            person_count: 3,
            unassigned_count: 1,
        },
    );
    events.record(&event, None).await.expect("record");

    for target in ["sns", "eventbridge"] {
        wait_for(&format!("{target} delivered"), LIMIT, || async {
            let e = world
                .outbox(doc! {"event_id": &event.event_id, "target": target})
                .await;
            e.len() == 1 && e[0].get_str("status") == Ok(status::DELIVERED)
        })
        .await;
    }
    assert!(
        world
            .outbox(doc! {"event_id": &event.event_id, "target": "callback"})
            .await
            .is_empty(),
        "no callback entry for a job without one"
    );

    // The subscribed queue got the SNS notification with the event JSON as its message.
    let received = first_message(&sqs, &queue).await;
    let envelope: serde_json::Value =
        serde_json::from_str(received[0].body().expect("body")).expect("SNS envelope");
    assert_eq!(envelope["TopicArn"], topic.as_str());
    assert_eq!(
        envelope["MessageAttributes"]["event_type"]["Value"],
        "gallery.grouped"
    );
    let published: Event =
        serde_json::from_str(envelope["Message"].as_str().expect("message")).expect("event");
    assert_eq!(published, event);

    // The bus's rule delivered the EventBridge envelope with the event as its detail.
    let routed = first_message(&sqs, &bus_queue).await;
    let envelope: serde_json::Value =
        serde_json::from_str(routed[0].body().expect("body")).expect("EventBridge envelope");
    assert_eq!(envelope["source"], "facegroup");
    assert_eq!(envelope["detail-type"], "gallery.grouped");
    let detail: Event = serde_json::from_value(envelope["detail"].clone()).expect("event");
    assert_eq!(detail, event);
}

/// The messages of the first receive on `queue` that returns any.
async fn first_message(sqs: &aws_sdk_sqs::Client, queue: &str) -> Vec<aws_sdk_sqs::types::Message> {
    let received = std::sync::Mutex::new(Vec::new());
    wait_for(&format!("a message on {queue}"), LIMIT, || async {
        let out = sqs
            .receive_message()
            .queue_url(queue)
            .wait_time_seconds(1)
            .send()
            .await
            .expect("receive");
        let mut got = received.lock().expect("lock");
        got.extend(out.messages.unwrap_or_default());
        !got.is_empty()
    })
    .await;
    received.into_inner().expect("lock")
}

/// Each event type as the worker serialises it is valid under `docs/schemas/event.schema.json`,
/// and the schema is not vacuous: an `image.done` without its face count is rejected.
#[test]
fn events_match_their_schema() {
    let grouped = Event::gallery_grouped(
        "g1",
        GroupedRun {
            run_number: 1,
            run_id: "run-0000000001",
            groups_key: "groups/g1/run-0000000001.json",
            model_version: "det+emb",
            face_count: 2,
            person_count: 1,
            unassigned_count: 0,
        },
    );
    let failed = Event::image_failed("g1", "x.jpg", "m-1", "permanent", "corrupt");
    let mut broken = serde_json::to_value(done_event("a.jpg")).expect("json");
    broken.as_object_mut().expect("object").remove("face_count");
    let events = serde_json::json!({
        "valid": [done_event("a.jpg"), failed, grouped],
        "invalid": [broken],
    });
    let script = r#"
import json, sys, jsonschema
schema = json.load(open("docs/schemas/event.schema.json"))
jsonschema.Draft202012Validator.check_schema(schema)
v = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
data = json.load(sys.stdin)
bad = [e for e in data["valid"] if not v.is_valid(e)]
missed = [e for e in data["invalid"] if v.is_valid(e)]
print(json.dumps({"bad": bad, "missed": missed}))
"#;
    let out = run_python(&["-c", script], events.to_string().as_bytes());
    let result: serde_json::Value = serde_json::from_slice(&out).expect("json");
    assert_eq!(result, serde_json::json!({"bad": [], "missed": []}));
}
