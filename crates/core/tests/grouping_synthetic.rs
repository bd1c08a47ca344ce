//! Person grouping on synthetic embeddings, where the right answer is known by construction.

mod common;

use common::person_of;
use facegroup_core::group::{baselines, metrics, KnnGraph};
use facegroup_core::{
    assign_new_faces, group_faces, Constraints, FaceInput, GroupConfig, GroupError, Groups,
    MustLink,
};
use facegroup_testkit::{normalise, Rng};

const DIM: usize = 512;

/// A face `noise` away from `centre` (noise 1.0 gives cos ~0.7 to the centre in 512-d).
fn around(rng: &mut Rng, centre: &[f32], noise: f32) -> Vec<f32> {
    let r = rng.unit(DIM);
    normalise(centre.iter().zip(&r).map(|(c, x)| c + noise * x).collect())
}

fn face(id: &str, image: &str, embedding: Vec<f32>) -> FaceInput {
    FaceInput {
        face_id: id.to_owned(),
        image_id: image.to_owned(),
        embedding,
        quality_ok: true,
        quality: 0.9,
    }
}

/// `people` identities with `per_person` faces each (ids `p{person}_{n}`, one photo per face),
/// plus `strangers` one-off faces (`s{n}`).
fn gallery(seed: u64, people: usize, per_person: usize, strangers: usize) -> Vec<FaceInput> {
    let mut rng = Rng::new(seed);
    let mut faces = Vec::new();
    for p in 0..people {
        let centre = rng.unit(DIM);
        for n in 0..per_person {
            let id = format!("p{p:02}_{n:02}");
            faces.push(face(
                &id,
                &format!("img-{id}"),
                around(&mut rng, &centre, 1.0),
            ));
        }
    }
    for s in 0..strangers {
        let id = format!("s{s:03}");
        faces.push(face(&id, &format!("img-{id}"), rng.unit(DIM)));
    }
    faces
}

fn truth_prefix(id: &str) -> &str {
    id.split('_').next().unwrap_or(id)
}

#[test]
fn recovers_separated_people_and_leaves_strangers_unassigned() {
    let faces = gallery(1, 6, 8, 20);
    let groups = group_faces(&faces, &GroupConfig::default(), None, None).expect("grouping");
    assert_eq!(groups.persons.len(), 6, "{groups:#?}");
    for p in &groups.persons {
        let first = truth_prefix(&p.face_ids[0]);
        assert_eq!(p.face_ids.len(), 8);
        assert!(p.face_ids.iter().all(|f| truth_prefix(f) == first), "{p:?}");
        assert!(p.face_ids.contains(&p.representative));
    }
    assert_eq!(groups.unassigned.len(), 20);
    assert!(groups.unassigned.iter().all(|f| f.starts_with('s')));
}

/// Faces halfway between two people link them under single linkage (connected components)
/// but cannot pull the two people's averages together.
#[test]
fn bridge_faces_do_not_chain_two_people() {
    let mut rng = Rng::new(7);
    let (a, b) = (rng.unit(DIM), rng.unit(DIM));
    let mut faces = Vec::new();
    for n in 0..10 {
        faces.push(face(
            &format!("a_{n}"),
            &format!("ia{n}"),
            around(&mut rng, &a, 0.6),
        ));
        faces.push(face(
            &format!("b_{n}"),
            &format!("ib{n}"),
            around(&mut rng, &b, 0.6),
        ));
    }
    let mid = normalise(a.iter().zip(&b).map(|(x, y)| x + y).collect());
    for n in 0..3 {
        faces.push(face(
            &format!("m_{n}"),
            &format!("im{n}"),
            around(&mut rng, &mid, 0.2),
        ));
    }

    // The construction really does chain: connected components at 0.5 puts a and b together.
    let data: Vec<f32> = faces.iter().flat_map(|f| f.embedding.clone()).collect();
    let cc = baselines::connected_components(&baselines::radius_neighbours(&data, DIM, 0.5), 1);
    assert_eq!(
        cc[0], cc[1],
        "bridge should chain a_0 and b_0 under connected components"
    );

    let groups = group_faces(&faces, &GroupConfig::default(), None, None).expect("grouping");
    let (pa, pb) = (person_of(&groups, "a_0"), person_of(&groups, "b_0"));
    assert!(pa.is_some() && pb.is_some(), "{groups:#?}");
    assert_ne!(pa, pb, "{groups:#?}");
    for n in 1..10 {
        assert_eq!(person_of(&groups, &format!("a_{n}")), pa);
        assert_eq!(person_of(&groups, &format!("b_{n}")), pb);
    }
}

#[test]
fn faces_of_one_photo_are_never_one_person() {
    let mut rng = Rng::new(3);
    let centre = rng.unit(DIM);
    let mut faces: Vec<FaceInput> = (0..6)
        .map(|n| {
            face(
                &format!("f{n}"),
                &format!("photo{n}"),
                around(&mut rng, &centre, 0.5),
            )
        })
        .collect();
    // A near-identical face in the same photo as f0 (a mirror, a poster, a twin).
    faces.push(face("twin", "photo0", around(&mut rng, &centre, 0.1)));
    let groups = group_faces(&faces, &GroupConfig::default(), None, None).expect("grouping");
    for p in &groups.persons {
        let mut photos: Vec<&str> = p
            .face_ids
            .iter()
            .map(|id| {
                faces
                    .iter()
                    .find(|f| &f.face_id == id)
                    .map_or("", |f| &f.image_id)
            })
            .collect();
        let n = photos.len();
        photos.sort_unstable();
        photos.dedup();
        assert_eq!(photos.len(), n, "two faces of one photo in {p:?}");
    }
    assert_ne!(person_of(&groups, "f0"), person_of(&groups, "twin"));
}

#[test]
fn low_quality_faces_neither_seed_nor_bridge_but_attach() {
    let mut rng = Rng::new(11);
    let (a, b) = (rng.unit(DIM), rng.unit(DIM));
    let mut faces = Vec::new();
    for n in 0..6 {
        faces.push(face(
            &format!("a_{n}"),
            &format!("ia{n}"),
            around(&mut rng, &a, 0.6),
        ));
        faces.push(face(
            &format!("b_{n}"),
            &format!("ib{n}"),
            around(&mut rng, &b, 0.6),
        ));
    }
    let poor = |id: &str, e: Vec<f32>| FaceInput {
        quality_ok: false,
        quality: 0.1,
        ..face(id, &format!("i-{id}"), e)
    };
    // Two near-identical poor faces of an unknown: alone they would make a person.
    let c = rng.unit(DIM);
    faces.push(poor("c_0", around(&mut rng, &c, 0.2)));
    faces.push(poor("c_1", around(&mut rng, &c, 0.2)));
    // A poor face of `a`: attached afterwards.
    faces.push(poor("a_poor", around(&mut rng, &a, 0.6)));
    // Poor faces halfway between a and b: must not merge them.
    let mid = normalise(a.iter().zip(&b).map(|(x, y)| x + y).collect());
    for n in 0..4 {
        faces.push(poor(&format!("m_{n}"), around(&mut rng, &mid, 0.1)));
    }
    let groups = group_faces(&faces, &GroupConfig::default(), None, None).expect("grouping");
    assert_eq!(groups.persons.len(), 2, "{groups:#?}");
    assert!(groups.unassigned.contains(&"c_0".to_owned()));
    assert!(groups.unassigned.contains(&"c_1".to_owned()));
    assert_eq!(person_of(&groups, "a_poor"), person_of(&groups, "a_0"));
    assert_ne!(person_of(&groups, "a_0"), person_of(&groups, "b_0"));
    for p in &groups.persons {
        assert!(!p.representative.contains("poor") && !p.representative.starts_with('m'));
    }
}

#[test]
fn clusters_under_the_minimum_size_stay_unassigned() {
    let faces = gallery(5, 3, 2, 0);
    let two = group_faces(&faces, &GroupConfig::default(), None, None).expect("grouping");
    assert_eq!(two.persons.len(), 3);
    let cfg = GroupConfig {
        min_cluster_size: 3,
        ..GroupConfig::default()
    };
    let three = group_faces(&faces, &cfg, None, None).expect("grouping");
    assert!(three.persons.is_empty());
    assert_eq!(three.unassigned.len(), 6);
}

#[test]
fn output_does_not_depend_on_input_order() {
    let faces = gallery(9, 8, 6, 15);
    let first = group_faces(&faces, &GroupConfig::default(), None, None).expect("grouping");
    let mut shuffled = faces.clone();
    let mut rng = Rng::new(42);
    for i in (1..shuffled.len()).rev() {
        shuffled.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
    let second = group_faces(&shuffled, &GroupConfig::default(), None, None).expect("grouping");
    assert_eq!(first, second);
}

#[test]
fn regrouping_keeps_person_ids_and_numbers_new_ones_after_them() {
    let faces = gallery(13, 5, 6, 0);
    let before = group_faces(&faces, &GroupConfig::default(), None, None).expect("grouping");
    assert_eq!(before.persons.len(), 5);
    let mut more = faces.clone();
    let mut rng = Rng::new(14);
    let newcomer = rng.unit(DIM);
    for n in 0..4 {
        let id = format!("q_{n}");
        more.push(face(
            &id,
            &format!("img-{id}"),
            around(&mut rng, &newcomer, 1.0),
        ));
    }
    // Reversed input and relabelled previous ids: matching is by members, not by position.
    more.reverse();
    let mut previous = before.clone();
    for (n, p) in previous.persons.iter_mut().enumerate() {
        p.person_id = format!("person-{}", 10 + n);
    }
    let after =
        group_faces(&more, &GroupConfig::default(), Some(&previous), None).expect("grouping");
    assert_eq!(after.persons.len(), 6);
    for p in &previous.persons {
        assert_eq!(
            person_of(&after, &p.face_ids[0]),
            Some(p.person_id.as_str())
        );
    }
    assert_eq!(person_of(&after, "q_0"), Some("person-15"));
}

#[test]
fn incremental_assignment_files_new_faces_under_existing_persons() {
    let mut rng = Rng::new(21);
    let (a, b) = (rng.unit(DIM), rng.unit(DIM));
    let mut faces: Vec<FaceInput> = (0..5)
        .flat_map(|n| {
            [
                face(
                    &format!("a_{n}"),
                    &format!("ia{n}"),
                    around(&mut rng, &a, 0.8),
                ),
                face(
                    &format!("b_{n}"),
                    &format!("ib{n}"),
                    around(&mut rng, &b, 0.8),
                ),
            ]
        })
        .collect();
    let cfg = GroupConfig::default();
    let before = group_faces(&faces, &cfg, None, None).expect("grouping");
    assert_eq!(before.persons.len(), 2);
    faces.push(face("a_new", "new1", around(&mut rng, &a, 0.8)));
    faces.push(face("stranger", "new2", rng.unit(DIM)));
    // Same photo as a_0: may not join a's person.
    faces.push(face("a_dup", "ia0", around(&mut rng, &a, 0.3)));
    let after = assign_new_faces(&faces, &before, &cfg, None).expect("incremental");
    let pa = person_of(&before, "a_0");
    assert_eq!(person_of(&after, "a_new"), pa);
    assert_eq!(person_of(&after, "stranger"), None);
    assert_ne!(person_of(&after, "a_dup"), pa);
    for p in &before.persons {
        assert!(after.persons.iter().any(|q| q.person_id == p.person_id));
    }
}

#[test]
fn bad_input_is_an_error() {
    let mut faces = gallery(2, 1, 3, 0);
    faces[1].face_id = faces[0].face_id.clone();
    assert!(matches!(
        group_faces(&faces, &GroupConfig::default(), None, None),
        Err(GroupError::DuplicateFaceId(_))
    ));
    let mut faces = gallery(2, 1, 3, 0);
    faces[2].embedding.pop();
    assert!(matches!(
        group_faces(&faces, &GroupConfig::default(), None, None),
        Err(GroupError::DimensionMismatch { .. })
    ));
    let mut faces = gallery(2, 1, 3, 0);
    faces[0].embedding = vec![0.0; DIM];
    assert!(matches!(
        group_faces(&faces, &GroupConfig::default(), None, None),
        Err(GroupError::BadEmbedding { .. })
    ));
    assert_eq!(
        group_faces(&[], &GroupConfig::default(), None, None).expect("empty"),
        Groups::default()
    );
}

/// Above `exact_max` the graph comes from an IVF index; on well-clustered data its
/// neighbours must still be the true ones.
#[test]
fn approximate_graph_finds_the_same_people() {
    // 2000 faces: 51 inverted lists, of which 32 are probed.
    let faces = gallery(17, 150, 10, 500);
    let mut cfg = GroupConfig::default();
    let exact = group_faces(&faces, &cfg, None, None).expect("exact");
    cfg.knn.exact_max = 100;
    let approx = group_faces(&faces, &cfg, None, None).expect("ivf");
    assert_eq!(exact.persons.len(), 150);
    assert_eq!(exact, approx);
    let data: Vec<f32> = faces.iter().flat_map(|f| f.embedding.clone()).collect();
    let graph = KnnGraph::build(&data, DIM, &cfg.knn).expect("graph");
    assert_eq!(graph.len(), faces.len());
    // Every person's face has its 9 companions as its 9 nearest neighbours.
    let first: Vec<usize> = graph.row(0).take(9).map(|(j, _)| j).collect();
    assert!(first.iter().all(|&j| (1..10).contains(&j)), "{first:?}");
}

#[test]
fn metrics_match_hand_computed_values() {
    // Truth: {0,1,2} {3,4}; predicted: {0,1} {2,3} and 4 unassigned.
    let s = metrics::score(
        &[0, 0, 0, 1, 1],
        &[Some(0), Some(0), Some(1), Some(1), None],
    );
    assert!((s.pairwise.precision - 0.5).abs() < 1e-9);
    assert!((s.pairwise.recall - 0.25).abs() < 1e-9);
    // BCubed precision: (1 + 1 + .5 + .5 + 1) / 5; recall: (2/3 + 2/3 + 1/3 + 1/2 + 1/2) / 5.
    assert!((s.bcubed.precision - 0.8).abs() < 1e-9);
    assert!((s.bcubed.recall - (2.0 / 3.0 + 2.0 / 3.0 + 1.0 / 3.0 + 1.0) / 5.0).abs() < 1e-9);
}

#[test]
fn dbscan_and_immich_baselines_behave_as_documented() {
    // Chain 0-1-2 plus an isolated pair 3-4 (similarities given directly).
    let nb: baselines::Neighbourhoods = vec![
        vec![(1, 0.9)],
        vec![(0, 0.9), (2, 0.8)],
        vec![(1, 0.8)],
        vec![(4, 0.9)],
        vec![(3, 0.9)],
    ];
    // min_samples 3: only face 1 is core; 0 and 2 are its border; the pair is noise.
    assert_eq!(
        baselines::dbscan(&nb, 3),
        vec![Some(0), Some(0), Some(0), None, None]
    );
    // Immich: face 0 is not core (deferred), 1 founds a person, 2 deferred; deferred faces
    // join the person of their nearest assigned neighbour.
    assert_eq!(
        baselines::immich(&nb, 3),
        vec![Some(0), Some(0), Some(0), None, None]
    );
}

fn must(faces: &[&str], person_id: Option<&str>) -> MustLink {
    MustLink {
        face_ids: faces.iter().map(|f| f.to_string()).collect(),
        person_id: person_id.map(str::to_string),
    }
}

#[test]
fn must_link_merges_two_people_the_user_says_are_one_and_pins_the_id() {
    let faces = gallery(31, 3, 6, 0);
    let cfg = GroupConfig::default();
    let free = group_faces(&faces, &cfg, None, None).expect("grouping");
    assert_eq!(free.persons.len(), 3);
    assert_ne!(person_of(&free, "p00_00"), person_of(&free, "p01_00"));
    // One must-link face pair joins the two whole clusters (the rest follows by similarity).
    let c = Constraints {
        must_link: vec![must(&["p00_00", "p01_00"], Some("person-ana"))],
        ..Constraints::default()
    };
    let merged = group_faces(&faces, &cfg, Some(&free), Some(&c)).expect("grouping");
    let ana = merged
        .persons
        .iter()
        .find(|p| p.person_id == "person-ana")
        .expect("the pinned id is kept");
    assert!(ana.face_ids.contains(&"p00_00".to_string()));
    assert!(ana.face_ids.contains(&"p01_00".to_string()));
    assert_eq!(person_of(&merged, "p02_00"), person_of(&free, "p02_00"));
}

#[test]
fn cannot_link_keeps_two_faces_apart_in_full_and_incremental_runs() {
    let faces = gallery(32, 2, 8, 0);
    let cfg = GroupConfig::default();
    let free = group_faces(&faces, &cfg, None, None).expect("grouping");
    assert_eq!(person_of(&free, "p00_00"), person_of(&free, "p00_05"));
    let c = Constraints {
        cannot_link: vec![("p00_00".into(), "p00_05".into())],
        ..Constraints::default()
    };
    let full = group_faces(&faces, &cfg, Some(&free), Some(&c)).expect("grouping");
    assert_ne!(person_of(&full, "p00_05"), person_of(&full, "p00_00"));
    assert!(person_of(&full, "p00_00").is_some());
    // Incremental on the unconstrained run: the person gives the later face up.
    let incremental = assign_new_faces(&faces, &free, &cfg, Some(&c)).expect("incremental");
    assert_ne!(
        person_of(&incremental, "p00_05"),
        person_of(&incremental, "p00_00")
    );
    assert_eq!(
        person_of(&incremental, "p00_01"),
        person_of(&free, "p00_01")
    );
}

#[test]
fn two_named_persons_never_merge_and_new_faces_follow_must_links() {
    // One person's faces named as two persons (the user knows better, e.g. twins).
    let faces = gallery(33, 1, 10, 0);
    let cfg = GroupConfig::default();
    let c = Constraints {
        must_link: vec![
            must(&["p00_00", "p00_01"], Some("person-a")),
            must(&["p00_02", "p00_03"], Some("person-b")),
        ],
        ..Constraints::default()
    };
    let groups = group_faces(&faces, &cfg, None, Some(&c)).expect("grouping");
    assert_eq!(person_of(&groups, "p00_01"), Some("person-a"));
    assert_eq!(person_of(&groups, "p00_03"), Some("person-b"));
    // A new, unrelated face must-linked to person-a joins it in an incremental run.
    let mut more = faces.clone();
    let mut rng = Rng::new(34);
    more.push(face("x_0", "img-x0", rng.unit(DIM)));
    let plain = assign_new_faces(&more, &groups, &cfg, None).expect("incremental");
    assert_eq!(person_of(&plain, "x_0"), None, "a stranger joins no one");
    let mut linked = c.clone();
    linked.must_link.push(must(&["p00_00", "x_0"], None));
    let after = assign_new_faces(&more, &groups, &cfg, Some(&linked)).expect("incremental");
    assert_eq!(person_of(&after, "x_0"), Some("person-a"));
    assert_eq!(person_of(&after, "p00_03"), Some("person-b"));
}
