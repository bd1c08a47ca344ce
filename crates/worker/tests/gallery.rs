//! The per-gallery grouping state against a real MongoDB wire server (SecantusDB): the lease's
//! fencing token, coalescing, takeover, expiry, the fenced commit, and fenced, chunked
//! person-id writes.

use std::time::Duration;

use facegroup_core::{Groups, Person};
use facegroup_worker::gallery::{Acquire, Commit, CommittedRun, GalleryStore, Rerun};
use facegroup_worker::mongo::MongoStore;
use futures::TryStreamExt;
use mongodb::bson::{doc, Document};

use facegroup_testkit::*;

const TTL: Duration = Duration::from_secs(60);

async fn stores(mongo: &Server) -> (MongoStore, GalleryStore, mongodb::Client) {
    let client = mongodb::Client::with_uri_str(mongo_uri(mongo.port))
        .await
        .expect("client");
    let store = MongoStore::from_client(&client);
    let galleries = GalleryStore::new(&store);
    (store, galleries, client)
}

fn run(n: u64) -> CommittedRun {
    CommittedRun {
        run_id: format!("run-{n}"),
        run_number: n,
        key: format!("groups/g/run-{n}.json"),
        face_count: 1,
        summary_key: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_fences_coalesces_and_takes_over() {
    let mongo = start_mongo();
    let (_, g, _) = stores(&mongo).await;

    let Acquire::Acquired { lease: a, state } =
        g.acquire("g", "msg-a", TTL, false, None).await.expect("a")
    else {
        panic!("a new gallery's lease is free");
    };
    assert_eq!(a.token, 1);
    assert_eq!(state.committed, None);
    assert_eq!(state.next_person, 1);

    // Another job coalesces into a's lease instead of running.
    assert_eq!(
        g.acquire("g", "msg-b", TTL, false, None).await.expect("b"),
        Acquire::Coalesced { holder_token: 1 }
    );
    assert_eq!(
        g.acquire("g", "msg-c", TTL, true, None).await.expect("c"),
        Acquire::Coalesced { holder_token: 1 }
    );
    assert!(g.renew(&a, TTL).await.expect("renew"));

    // a's message redelivered (its worker died): it takes over with a newer token at once.
    let Acquire::Acquired { lease: a2, .. } =
        g.acquire("g", "msg-a", TTL, false, None).await.expect("a2")
    else {
        panic!("the holder's own message takes over");
    };
    assert_eq!(a2.token, 2);
    // The stale job can neither renew nor commit.
    assert!(!g.renew(&a, TTL).await.expect("stale renew"));
    assert_eq!(g.commit(&a, &run(1), 5).await.expect("stale"), Commit::Lost);
    assert_eq!(g.state("g").await.expect("state").committed, None);

    // Coalesced requests before the takeover were covered by it (the new holder reads later);
    // one after it is handed to the commit, with the strongest mode asked and its own minimum
    // quality.
    assert_eq!(
        g.acquire("g", "msg-d", TTL, true, Some(0.25))
            .await
            .expect("d"),
        Acquire::Coalesced { holder_token: 2 }
    );
    assert_eq!(
        g.commit(&a2, &run(2), 4).await.expect("commit"),
        Commit::Committed {
            rerun: Some(Rerun {
                full: true,
                min_quality: Some(0.25)
            })
        }
    );
    let state = g.state("g").await.expect("state");
    assert_eq!(state.committed, Some(run(2)));
    assert_eq!(state.next_person, 4);

    // Released: the next job gets a newer token and the committed state.
    let Acquire::Acquired { lease: e, state } =
        g.acquire("g", "msg-e", TTL, false, None).await.expect("e")
    else {
        panic!("released lease is free");
    };
    assert_eq!(e.token, 3);
    assert_eq!(state.committed, Some(run(2)));
    assert_eq!(g.release(&e).await.expect("release"), None);
    assert_eq!(g.commit_history("g").await.expect("history"), vec![2]);

    // An expired lease is free for anyone.
    let Acquire::Acquired { lease: f, .. } = g
        .acquire("g", "msg-f", Duration::ZERO, false, None)
        .await
        .expect("f")
    else {
        panic!("free");
    };
    let Acquire::Acquired { lease: h, .. } =
        g.acquire("g", "msg-h", TTL, false, None).await.expect("h")
    else {
        panic!("an expired lease is taken over");
    };
    assert!(h.token > f.token);
    g.abandon(&h).await.expect("abandon");
    assert!(matches!(
        g.acquire("g", "msg-i", TTL, false, None).await.expect("i"),
        Acquire::Acquired { .. }
    ));
}

async fn person_ids(faces: &mongodb::Collection<Document>) -> Vec<(String, Option<String>, i64)> {
    let mut out: Vec<(String, Option<String>, i64)> = faces
        .find(doc! {})
        .await
        .expect("find")
        .try_collect::<Vec<Document>>()
        .await
        .expect("faces")
        .iter()
        .map(|d| {
            (
                d.get_str("_id").expect("id").to_string(),
                d.get_str("person_id").ok().map(str::to_string),
                d.get_i64("person_run").unwrap_or(-1),
            )
        })
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn person_ids_are_fenced_by_run_and_chunked() {
    let mongo = start_mongo();
    let (store, _, _) = stores(&mongo).await;
    let faces = store.faces();
    // More faces than fit one chunk, for a person and for the unassigned ones (a small chunk
    // here; production's PERSON_ID_CHUNK goes through the same loop).
    const CHUNK: usize = 7;
    let n = 3 * CHUNK + 3;
    let ids: Vec<String> = (0..n).map(|i| format!("f{i:05}")).collect();
    let docs: Vec<Document> = ids.iter().map(|id| doc! {"_id": id}).collect();
    faces.insert_many(docs).await.expect("insert");

    let newer = Groups {
        persons: vec![Person {
            person_id: "person-2".into(),
            face_ids: vec!["f00000".into(), "f00001".into()],
            representative: "f00000".into(),
            name: None,
        }],
        unassigned: ids[2..].to_vec(),
    };
    store
        .set_person_ids_in_chunks(&newer, 5, CHUNK)
        .await
        .expect("run 5");
    let older = Groups {
        persons: vec![Person {
            person_id: "person-1".into(),
            face_ids: ids.clone(),
            representative: "f00000".into(),
            name: None,
        }],
        unassigned: vec![],
    };
    // A slow older run writing after the newer one changes nothing.
    store
        .set_person_ids_in_chunks(&older, 4, CHUNK)
        .await
        .expect("run 4");
    let got = person_ids(faces).await;
    assert_eq!(got.len(), n);
    assert_eq!(got[0], ("f00000".into(), Some("person-2".into()), 5));
    assert_eq!(got[1], ("f00001".into(), Some("person-2".into()), 5));
    assert!(
        got[2..].iter().all(|(_, p, r)| p.is_none() && *r == 5),
        "every chunk written"
    );

    // The same run again (a retry) and a newer one do write.
    store.set_person_ids(&older, 6).await.expect("run 6");
    assert!(person_ids(faces)
        .await
        .iter()
        .all(|(_, p, r)| p.as_deref() == Some("person-1") && *r == 6));
}
