//! Per-stage timings of the core pipeline on the sample photos (real models):
//! `cargo bench -p facegroup-core --bench core`. Needs scripts/setup.sh (models, photos,
//! ORT_DYLIB_PATH from .cache/env.sh).

use std::path::{Path, PathBuf};

use criterion::{criterion_group, criterion_main, Criterion};
use facegroup_core::align::{align_face, ALIGNED_SIZE};
use facegroup_core::{
    decode_image, ArcFace, DecodeOptions, FaceDetector, FaceEmbedder, Pipeline, PipelineConfig,
    Scrfd,
};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn config() -> PipelineConfig {
    let mut cfg = PipelineConfig::with_models(
        &root().join("models"),
        "scrfd_500m_bnkps.onnx",
        "w600k_mbf.onnx",
    );
    cfg.runtime.intra_threads = 1;
    cfg
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(root().join("testdata/images").join(name))
        .unwrap_or_else(|e| panic!("{name}: {e} (run scripts/setup.sh)"))
}

fn stages(c: &mut Criterion) {
    let cfg = config();
    let bytes = read("t1.jpg");
    let opts = DecodeOptions::default();
    let img = decode_image(&bytes, &opts).expect("decode");
    let mut det = Scrfd::new(cfg.detector.clone(), &cfg.runtime).expect("detector");
    let mut emb = ArcFace::new(cfg.embedder.clone(), &cfg.runtime).expect("embedder");
    let dets = det.detect(&img).expect("detect");
    let crops: Vec<_> = dets
        .iter()
        .filter_map(|d| d.landmarks)
        .map(|l| align_face(&img, &l, ALIGNED_SIZE).0)
        .collect();
    let crop_refs: Vec<_> = crops.iter().collect();

    let mut g = c.benchmark_group("t1.jpg (6 faces, 1 thread)");
    g.sample_size(20);
    g.bench_function("decode", |b| {
        b.iter(|| decode_image(&bytes, &opts).expect("decode"))
    });
    g.bench_function("detect", |b| b.iter(|| det.detect(&img).expect("detect")));
    g.bench_function("align x6", |b| {
        b.iter(|| {
            dets.iter()
                .filter_map(|d| d.landmarks)
                .map(|l| align_face(&img, &l, ALIGNED_SIZE).0)
                .collect::<Vec<_>>()
        })
    });
    g.bench_function("embed x6 (one batch)", |b| {
        b.iter(|| emb.embed(&crop_refs).expect("embed"))
    });
    g.bench_function("embed x6 (six batches of one)", |b| {
        b.iter(|| {
            crop_refs
                .iter()
                .map(|c| emb.embed(&[*c]).expect("embed"))
                .collect::<Vec<_>>()
        })
    });
    let mut pipeline = Pipeline::new(&cfg).expect("pipeline");
    g.bench_function("end to end", |b| {
        b.iter(|| pipeline.analyze_bytes(&bytes).expect("analyze"))
    });
    g.finish();
}

criterion_group!(benches, stages);
criterion_main!(benches);
