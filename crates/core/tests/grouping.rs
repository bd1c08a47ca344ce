//! Person grouping on real photos through the real pipeline: the same person across photos
//! becomes one person, different people stay apart, and faces of one photo never merge.

mod common;

use common::person_of;
use facegroup_core::{group_faces, FaceInput, GroupConfig, Groups};

const PHOTOS: [&str; 6] = [
    "obama.jpg",
    "obama2.jpg",
    "obama3.jpg",
    "biden.jpg",
    "t1.jpg",
    "players.jpg",
];

/// Every face of the photos, ids `photo#index`.
fn faces_of(photos: &[&str]) -> Vec<FaceInput> {
    let mut pipeline = common::pipeline();
    let mut faces = Vec::new();
    for photo in photos {
        let (_, found) = pipeline
            .analyze_bytes(&common::image_bytes(photo))
            .unwrap_or_else(|e| panic!("{photo}: {e}"));
        assert!(!found.is_empty(), "{photo}: no face detected");
        for f in found {
            faces.push(FaceInput {
                face_id: format!("{photo}#{}", f.index),
                image_id: (*photo).to_owned(),
                embedding: f.embedding,
                quality_ok: f.quality.passes(),
                quality: f.quality.overall,
            });
        }
    }
    faces
}

/// Id of the largest face of a single-subject photo (portraits may show a second, small face).
fn main_face(photo: &str) -> String {
    let mut pipeline = common::pipeline();
    let (_, found) = pipeline
        .analyze_bytes(&common::image_bytes(photo))
        .unwrap_or_else(|e| panic!("{photo}: {e}"));
    let largest = found
        .iter()
        .max_by(|a, b| a.bbox.area().total_cmp(&b.bbox.area()))
        .unwrap_or_else(|| panic!("{photo}: no face"));
    format!("{photo}#{}", largest.index)
}

fn photo_of(face_id: &str) -> &str {
    face_id.split('#').next().unwrap_or(face_id)
}

#[test]
fn same_person_across_photos_and_never_within_one() {
    let faces = faces_of(&PHOTOS);
    let groups = group_faces(&faces, &GroupConfig::default(), None).expect("grouping");

    let obama = person_of(&groups, &main_face("obama.jpg"));
    assert!(
        obama.is_some(),
        "obama.jpg's face is in no person: {groups:#?}"
    );
    assert_eq!(person_of(&groups, &main_face("obama2.jpg")), obama);
    assert_eq!(person_of(&groups, &main_face("obama3.jpg")), obama);
    assert_ne!(person_of(&groups, &main_face("biden.jpg")), obama);

    // Cannot-link: the group photos have several faces, none of which share a person.
    for p in &groups.persons {
        let mut photos: Vec<&str> = p.face_ids.iter().map(|f| photo_of(f)).collect();
        let n = photos.len();
        photos.sort_unstable();
        photos.dedup();
        assert_eq!(
            photos.len(),
            n,
            "{} holds two faces of one photo: {p:?}",
            p.person_id
        );
    }
    let group_photo_faces = faces
        .iter()
        .filter(|f| f.image_id == "t1.jpg" || f.image_id == "players.jpg")
        .count();
    assert!(
        group_photo_faces >= 4,
        "group photos should show several faces"
    );
}

#[test]
fn regrouping_with_one_more_photo_keeps_person_ids() {
    let before_photos = [
        "obama.jpg",
        "obama2.jpg",
        "biden.jpg",
        "t1.jpg",
        "players.jpg",
    ];
    let cfg = GroupConfig::default();
    let before = group_faces(&faces_of(&before_photos), &cfg, None).expect("grouping");
    let obama_before = person_of(&before, &main_face("obama.jpg"))
        .expect("obama.jpg and obama2.jpg make a person")
        .to_owned();

    let after = group_faces(&faces_of(&PHOTOS), &cfg, Some(&before)).expect("regrouping");
    assert_eq!(
        person_of(&after, &main_face("obama.jpg")),
        Some(obama_before.as_str())
    );
    assert_eq!(
        person_of(&after, &main_face("obama3.jpg")),
        Some(obama_before.as_str())
    );
    for p in &before.persons {
        let kept = after.persons.iter().find(|q| q.person_id == p.person_id);
        let kept = kept.unwrap_or_else(|| panic!("{} vanished: {after:#?}", p.person_id));
        assert!(p.face_ids.iter().all(|f| kept.face_ids.contains(f)));
    }
}

#[test]
fn shuffled_input_gives_identical_groups() {
    let faces = faces_of(&PHOTOS);
    let cfg = GroupConfig::default();
    let first = group_faces(&faces, &cfg, None).expect("grouping");
    let mut shuffled = faces.clone();
    shuffled.reverse();
    let n = shuffled.len();
    shuffled.rotate_left(n / 3);
    let second = group_faces(&shuffled, &cfg, None).expect("grouping");
    assert_eq!(first, second);
    let json = serde_json::to_string(&first).expect("serialise");
    let back: Groups = serde_json::from_str(&json).expect("deserialise");
    assert_eq!(back, first);
}
