//! How long the grouping worker takes to file new faces into a large gallery through the
//! person summaries, against the test servers (moto for S3/SQS, SecantusDB for MongoDB).
//!
//! ```sh
//! cargo build --release -p facegroup-grouping-worker --bins --examples
//! cargo run --release -p facegroup-grouping-worker --example incremental_at_scale [-- PERSONS FACES_PER_PERSON NEW]
//! ```
//!
//! Defaults: 50,000 persons of 20 faces (a 1M-face gallery) and 1,000 new faces (700 of
//! existing persons, 300 strangers). The committed run 1 is made up directly in the stores, as
//! a full run of the worker leaves it: its run JSON (1M face ids), its person summaries, the
//! gallery's commit record. The old faces themselves are not stored (the summary path never
//! reads them; inserting 1M documents into SecantusDB would take longer than the measurement).
//! Then one incremental job runs in a worker started beforehand, and the line printed is
//!
//! `incremental persons=P faces=N new=M commit_s=.. written_s=.. assigned=.. run_json_mib=.. summary_mib=..`
//!
//! - `commit_s`: job sent to run 2 committed (reading run JSON + summaries + new faces,
//!   assignment, writing run JSON + summaries, the commit);
//! - `written_s`: job sent to person ids of the new faces written (`person_ids_run` = 2).
//!
//! The worker runs with `FACEGROUP_MAX_OBJECT_BYTES` raised to 1 GiB: the run JSON and the
//! summaries of a 1M-face gallery are both larger than the default 50 MiB limit.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use facegroup_core::group::incremental::PersonSummary;
use facegroup_testkit::{
    create_queue, start_mongo, start_moto, wait_exit, Rng, TestStack, WorkerTiming,
};
use facegroup_worker::gallery::GalleryStore;
use facegroup_worker::mongo::{encode_embedding, MongoStore};
use facegroup_worker::summaries::{self, SummaryHeader};
use mongodb::bson::{doc, spec::BinarySubtype, Binary, Document};
use serde_json::json;

const GALLERY: &str = "big";
const MODEL_VERSION: &str = "scrfd_500m_bnkps+w600k_mbf";
const DIM: usize = 512;

fn arg(n: usize, default: usize) -> usize {
    std::env::args()
        .nth(n)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

fn face_id(person: usize, i: usize) -> String {
    format!("{GALLERY}/p{person}-img{i}:{MODEL_VERSION}:0")
}

fn sorted_face_ids(person: usize, count: usize) -> Vec<String> {
    let mut ids: Vec<String> = (0..count).map(|i| face_id(person, i)).collect();
    ids.sort_unstable();
    ids
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let persons = arg(1, 50_000);
    let per_person = arg(2, 20);
    let new = arg(3, 1_000);
    let worker_bin = match std::env::var_os("FACEGROUP_GROUPING_WORKER") {
        Some(p) => PathBuf::from(p),
        // target/<profile>/examples/<this> -> target/<profile>/facegroup-grouping-worker
        None => std::env::current_exe()?
            .parent()
            .and_then(|p| p.parent())
            .map(|p| p.join("facegroup-grouping-worker"))
            .ok_or_else(|| anyhow::anyhow!("cannot locate the worker binary"))?,
    };
    anyhow::ensure!(
        worker_bin.exists(),
        "{} missing: build it first",
        worker_bin.display()
    );

    let logs = std::env::temp_dir().join("facegroup-incremental-bench");
    let s = TestStack::start(
        facegroup_worker::aws::loader(),
        start_moto(),
        start_mongo(),
        &logs,
        "bench",
    )
    .await;
    let (queue, _) = create_queue(&s.sqs, "group", 120, None).await;

    // Persons: a random mean direction each; a sum with the squared norm of `per_person` unit
    // faces at cosine 0.5 to each other, so the cohesion test sees an ordinary person.
    let mut rng = Rng::new(11);
    let centres: Vec<Vec<f32>> = (0..persons).map(|_| rng.unit(DIM)).collect();
    let n = per_person as f32;
    let norm = (n + 0.5 * n * (n - 1.0)).sqrt();
    let summary: Vec<PersonSummary> = centres
        .iter()
        .enumerate()
        .map(|(p, c)| {
            let mut image_ids: Vec<String> = (0..per_person)
                .map(|i| format!("{GALLERY}/p{p}-img{i}"))
                .collect();
            image_ids.sort_unstable();
            PersonSummary {
                person_id: format!("person-{}", p + 1),
                sum: c.iter().map(|x| x * norm).collect(),
                seeds: per_person as u32,
                faces: per_person as u32,
                image_ids,
                representative: face_id(p, 0),
            }
        })
        .collect();
    let header = SummaryHeader {
        gallery_id: GALLERY.into(),
        run_number: 1,
        model_version: MODEL_VERSION.into(),
        min_quality: facegroup_core::GroupConfig::default().min_quality,
        dim: DIM,
        persons: Vec::new(),
    };
    let summary_bytes = summaries::encode(&header, &summary)?;
    let summary_mib = summary_bytes.len() as f64 / (1 << 20) as f64;
    let summary_key = summaries::summary_key("groups/", GALLERY, 1);
    s.upload(&summary_key, summary_bytes).await;
    drop(summary);

    let run_key = format!("groups/{GALLERY}/run-{:010}.json", 1);
    let run = json!({
        "gallery_id": GALLERY, "run_id": "run-0000000001", "run_number": 1, "mode": "full",
        "model_version": MODEL_VERSION, "created_at_ms": 0, "face_count": persons * per_person,
        "persons": (0..persons).map(|p| json!({
            "person_id": format!("person-{}", p + 1),
            "face_ids": sorted_face_ids(p, per_person),
            "representative": face_id(p, 0),
        })).collect::<Vec<_>>(),
        "unassigned": [],
    });
    // Pretty, as the worker writes run JSONs.
    let run_bytes = serde_json::to_vec_pretty(&run)?;
    drop(run);
    let run_json_mib = run_bytes.len() as f64 / (1 << 20) as f64;
    s.upload(&run_key, run_bytes).await;

    let galleries = s.db.database("huemn").collection::<Document>("galleries");
    galleries
        .insert_one(doc! {
            "_id": GALLERY,
            "grouping": {
                "last_token": 1_i64,
                "committed": {"run_id": "run-0000000001", "run_number": 1_i64, "key": &run_key,
                              "face_count": (persons * per_person) as i64, "summary_key": &summary_key},
                "next_person": persons as i64 + 1,
                "person_ids_run": 1_i64,
                "commits": [1_i64],
            },
        })
        .await?;

    // New faces: 70% near a random person's direction (cos ~0.7), 30% strangers.
    let store = MongoStore::from_client(&s.db);
    store.ensure_indexes().await?;
    let docs: Vec<Document> = (0..new)
        .map(|j| {
            let (person, embedding) = if j % 10 < 7 {
                let p = (rng.next_u64() % persons as u64) as usize;
                let noise = rng.unit(DIM);
                let v: Vec<f32> = centres[p].iter().zip(&noise).map(|(c, e)| c + e).collect();
                (p, v)
            } else {
                (persons + j, rng.unit(DIM))
            };
            let image_id = format!("{GALLERY}/p{person}-new{j}");
            doc! {
                "_id": format!("{image_id}:{MODEL_VERSION}:0"),
                "image_id": &image_id, "gallery_id": GALLERY, "face_index": 0,
                "model_version": MODEL_VERSION,
                "bbox": {"x1": 0.0, "y1": 0.0, "x2": 100.0, "y2": 100.0}, "det_score": 0.9,
                "keypoints": [[30.0, 40.0], [70.0, 40.0], [50.0, 60.0], [35.0, 80.0], [65.0, 80.0]],
                "quality": {"sharpness": 200.0, "brightness": 120.0, "contrast": 40.0,
                            "highlights": 0.0, "shadows": 0.0, "yaw": 0.0, "pitch": 0.0,
                            "roll": 0.0, "face_size": 100.0, "det_score": 0.9,
                            "occlusion": 0.0, "overall": 0.9, "reasons": []},
                "quality_ok": true,
                "embedding": Binary { subtype: BinarySubtype::Generic, bytes: encode_embedding(&embedding) },
                "embedding_dim": DIM as i32,
            }
        })
        .collect();
    s.db.database("gallery_images")
        .collection::<Document>("faces")
        .insert_many(docs)
        .await?;
    drop(centres);

    let timing = WorkerTiming {
        visibility: 120,
        heartbeat: 20,
        idle_exit: 5,
    };
    let mut worker = s.worker(
        &worker_bin,
        "0",
        &queue,
        timing,
        &[
            ("FACEGROUP_DRAIN", "true"),
            ("FACEGROUP_LEASE_SECS", "120"),
            ("FACEGROUP_MAX_OBJECT_BYTES", "1073741824"),
        ],
    );
    // Let the worker start (connect, probe) before the clock starts.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let gs = GalleryStore::new(&store);
    let t = Instant::now();
    s.send(
        &queue,
        json!({"gallery_id": GALLERY, "mode": "incremental"}),
    )
    .await;
    let polled = until_written(&gs, t).await;
    if polled.is_err() {
        // Best effort: the worker is ours and would otherwise wait for its idle exit.
        let _ = worker.kill();
    }
    let status = wait_exit(&mut worker, Duration::from_secs(120)).await;
    let (commit_s, written_s) = polled?;
    anyhow::ensure!(
        status.success(),
        "worker exited with {status}: see {}",
        s.log_path("0").display()
    );
    let assigned = store
        .faces()
        .count_documents(doc! {"gallery_id": GALLERY, "person_id": {"$exists": true}})
        .await?;
    println!(
        "incremental persons={persons} faces={} new={new} commit_s={commit_s:.2} written_s={written_s:.2} \
         assigned={assigned} run_json_mib={run_json_mib:.1} summary_mib={summary_mib:.1}",
        persons * per_person,
    );
    Ok(())
}

/// Seconds from `t` to run 2 committed, and to its person ids written.
async fn until_written(gs: &GalleryStore, t: Instant) -> anyhow::Result<(f64, f64)> {
    let mut commit_s = None;
    loop {
        let state = gs.state(GALLERY).await?;
        let run = state.committed.as_ref().map_or(0, |c| c.run_number);
        if run >= 2 && commit_s.is_none() {
            commit_s = Some(t.elapsed().as_secs_f64());
        }
        if state.person_ids_run >= 2 {
            let written_s = t.elapsed().as_secs_f64();
            return Ok((commit_s.unwrap_or(written_s), written_s));
        }
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(600),
            "no commit after 600 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
