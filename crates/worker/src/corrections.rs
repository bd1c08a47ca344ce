//! Users' corrections of a gallery's persons in MongoDB (`huemn.person_corrections`): the facts
//! `facegroup_core::Corrections` keeps, one document per corrected person,
//!
//! ```text
//! {_id: "{gallery}/{person}", gallery_id, person_id,
//!  faces: [face id, ...], not_faces: [face id, ...], name?, updated_at}
//! ```
//!
//! One document per person rather than one per gallery, because a person's confirmed faces may
//! be many (a merge confirms every face of both persons) and a gallery's persons together could
//! pass MongoDB's 16 MiB document limit. A correction rewrites only the persons it touched.
//! Every write is a full replace (or a delete) of a document by its id, so writing the same
//! facts again is a no-op: what makes a redelivered correction idempotent here.

use futures::TryStreamExt;
use mongodb::bson::{doc, DateTime, Document};
use mongodb::options::IndexOptions;
use mongodb::{Collection, IndexModel};

use facegroup_core::group::{Corrections, PersonFacts};

use crate::error::StoreError;
use crate::mongo::MongoStore;

pub const CORRECTIONS_COLLECTION: &str = "person_corrections";

/// The corrections of the galleries.
#[derive(Clone)]
pub struct CorrectionStore {
    coll: Collection<Document>,
}

impl CorrectionStore {
    /// The collection next to the image status documents (`huemn`).
    pub fn new(mongo: &MongoStore) -> Self {
        let db = mongo.images().namespace().db;
        Self {
            coll: mongo
                .images()
                .client()
                .database(&db)
                .collection(CORRECTIONS_COLLECTION),
        }
    }

    pub async fn ensure_indexes(&self) -> Result<(), StoreError> {
        self.coll
            .create_index(
                IndexModel::builder()
                    .keys(doc! {"gallery_id": 1})
                    .options(IndexOptions::builder().name("gallery".to_string()).build())
                    .build(),
            )
            .await?;
        Ok(())
    }

    /// The gallery's corrections (empty when it has none).
    pub async fn load(&self, gallery_id: &str) -> Result<Corrections, StoreError> {
        let docs: Vec<Document> = self
            .coll
            .find(doc! {"gallery_id": gallery_id})
            .await?
            .try_collect()
            .await?;
        let mut out = Corrections::default();
        for d in docs {
            let bad = || StoreError::Malformed(format!("correction {:?}", d.get("_id")));
            let person_id = d.get_str("person_id").map_err(|_| bad())?.to_string();
            let list = |key: &str| -> Result<_, StoreError> {
                match d.get_array(key) {
                    Ok(a) => a
                        .iter()
                        .map(|b| b.as_str().map(str::to_string).ok_or_else(bad))
                        .collect(),
                    Err(_) => Ok(Default::default()),
                }
            };
            let facts = PersonFacts {
                faces: list("faces")?,
                not_faces: list("not_faces")?,
                name: d.get_str("name").ok().map(str::to_string),
            };
            out.persons.insert(person_id, facts);
        }
        Ok(out)
    }

    /// Stores the facts of the persons in `touched` as `book` holds them (deleting those it no
    /// longer has).
    pub async fn save<'a>(
        &self,
        gallery_id: &str,
        book: &Corrections,
        touched: impl IntoIterator<Item = &'a String>,
    ) -> Result<(), StoreError> {
        for person_id in touched {
            let id = format!("{gallery_id}/{person_id}");
            match book.persons.get(person_id) {
                Some(f) => {
                    let mut d = doc! {
                        "_id": &id, "gallery_id": gallery_id, "person_id": person_id,
                        "faces": f.faces.iter().collect::<Vec<_>>(),
                        "not_faces": f.not_faces.iter().collect::<Vec<_>>(),
                        "updated_at": DateTime::now(),
                    };
                    if let Some(name) = &f.name {
                        d.insert("name", name);
                    }
                    self.coll
                        .replace_one(doc! {"_id": &id}, d)
                        .upsert(true)
                        .await?;
                }
                None => {
                    self.coll.delete_one(doc! {"_id": &id}).await?;
                }
            }
        }
        Ok(())
    }

    /// Forgets the faces `gone` selects in the gallery's corrections (they were deleted).
    pub async fn forget_faces(
        &self,
        gallery_id: &str,
        gone: impl Fn(&str) -> bool,
    ) -> Result<(), StoreError> {
        let mut book = self.load(gallery_id).await?;
        let touched = book.forget_faces(gone);
        self.save(gallery_id, &book, &touched).await
    }

    /// Forgets person `person_id` of the gallery (deleted or dissolved).
    pub async fn forget_person(&self, gallery_id: &str, person_id: &str) -> Result<(), StoreError> {
        self.coll
            .delete_one(doc! {"_id": format!("{gallery_id}/{person_id}")})
            .await?;
        Ok(())
    }

    /// Deletes every correction of the gallery.
    pub async fn delete_gallery(&self, gallery_id: &str) -> Result<(), StoreError> {
        self.coll
            .delete_many(doc! {"gallery_id": gallery_id})
            .await?;
        Ok(())
    }
}
