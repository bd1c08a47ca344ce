//! The S3 store against moto with IAM enforcement on: a read the role's policy does not allow is
//! a clear permanent failure (the object cannot be read by this role), not a temporary one that
//! would be retried into the DLQ.

use aws_sdk_s3::primitives::ByteStream;
use facegroup_worker::s3::S3Store;
use facegroup_worker::{ErrorClass, JobError, StoreError};

use facegroup_testkit::*;

/// Creates, unauthenticated (the first actions moto allows), a bucket with one object and two
/// users: `reader` may get objects, `lister` may only list the bucket. Returns their access
/// keys as `(reader_id, reader_secret, lister_id, lister_secret)`.
fn set_up_iam(moto: &Server) -> (String, String, String, String) {
    let script = r#"
import boto3, json, sys
kw = dict(endpoint_url=sys.argv[1], region_name="us-east-1",
          aws_access_key_id="setup", aws_secret_access_key="setup")
s3 = boto3.client("s3", **kw)
iam = boto3.client("iam", **kw)
s3.create_bucket(Bucket="photos")
s3.put_object(Bucket="photos", Key="uploads/a.jpg", Body=b"jpeg bytes")
out = []
for user, actions in [("reader", ["s3:GetObject", "s3:ListBucket"]), ("lister", ["s3:ListBucket"])]:
    iam.create_user(UserName=user)
    iam.put_user_policy(UserName=user, PolicyName="p", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": actions,
                       "Resource": ["arn:aws:s3:::photos", "arn:aws:s3:::photos/*"]}]}))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    out += [key["AccessKeyId"], key["SecretAccessKey"]]
print(" ".join(out))
"#;
    let out = run_python(&["-c", script, &moto.endpoint()], b"");
    let text = String::from_utf8(out).expect("utf8");
    let keys: Vec<String> = text.split_whitespace().map(str::to_string).collect();
    assert_eq!(keys.len(), 4, "{text}");
    (
        keys[0].clone(),
        keys[1].clone(),
        keys[2].clone(),
        keys[3].clone(),
    )
}

async fn store_as(moto: &Server, id: &str, secret: &str) -> S3Store {
    let conf = moto_loader(facegroup_worker::aws::loader(), moto)
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            id, secret, None, None, "tests",
        ))
        .load()
        .await;
    S3Store::new(
        facegroup_worker::aws::s3_client(&conf, true),
        "photos".into(),
        1 << 20,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_the_role_may_not_do_is_a_permanent_denied_failure() {
    // Set-up: bucket, object, 2 x (user, policy, access key) = 8 unauthenticated actions.
    let moto = start_moto_with(&[("INITIAL_NO_AUTH_ACTION_COUNT", "8")]);
    let (reader_id, reader_secret, lister_id, lister_secret) = set_up_iam(&moto);

    // The reader's policy allows the read: the enforcement is not simply denying everything.
    let reader = store_as(&moto, &reader_id, &reader_secret).await;
    assert_eq!(
        reader.get("photos", "uploads/a.jpg").await.expect("read"),
        b"jpeg bytes"
    );
    // The same user may list, so a missing key is a 404, told apart from a denial.
    let missing = reader.get("photos", "uploads/nope.jpg").await;
    assert!(
        matches!(missing, Err(StoreError::NotFound { .. })),
        "{missing:?}"
    );

    // Without s3:GetObject: 403, classified as denied and permanent, with a clear reason.
    let lister = store_as(&moto, &lister_id, &lister_secret).await;
    let denied = lister
        .get("photos", "uploads/a.jpg")
        .await
        .expect_err("read without s3:GetObject");
    assert!(
        matches!(denied, StoreError::Denied { .. }),
        "expected Denied, got {denied:?}"
    );
    let job = JobError::from(denied);
    assert_eq!(job.class, ErrorClass::Permanent);
    assert!(job.reason.contains("access denied"), "{}", job.reason);
    assert!(
        job.reason.contains("s3://photos/uploads/a.jpg"),
        "{}",
        job.reason
    );

    // Writes are not the reader's either.
    let put = lister
        .client()
        .put_object()
        .bucket("photos")
        .key("uploads/b.jpg")
        .body(ByteStream::from_static(b"x"))
        .send()
        .await;
    assert!(put.is_err(), "write outside the policy allowed");
}

/// `delete_prefix` erases everything under a folder across list pages (S3 lists 1,000 keys a
/// page) and nothing beside it: the thumbnail erasure of a large gallery relies on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_prefix_erases_every_page_and_nothing_else() {
    let moto = start_moto();
    let conf = moto_loader(facegroup_worker::aws::loader(), &moto)
        .load()
        .await;
    let client = facegroup_worker::aws::s3_client(&conf, true);
    client
        .create_bucket()
        .bucket("results")
        .send()
        .await
        .expect("create bucket");
    let store = S3Store::new(client, "results".into(), 1 << 20);
    let keys: Vec<String> = (0..1005)
        .map(|i| format!("thumbnails/g/img-{}/m/{i}.aligned.jpg", i % 7))
        .collect();
    futures::future::try_join_all(
        keys.iter()
            .map(|k| store.put_bytes(k, b"jpeg".to_vec(), "image/jpeg")),
    )
    .await
    .expect("put thumbnails");
    for k in ["thumbnails/g2/img-0/m/0.aligned.jpg", "faces/g/img-0.json"] {
        store
            .put_bytes(k, b"x".to_vec(), "application/octet-stream")
            .await
            .expect("put neighbour");
    }
    assert_eq!(
        store.list_keys("thumbnails/g/").await.expect("list").len(),
        1005
    );
    assert_eq!(
        store.delete_prefix("thumbnails/g/").await.expect("delete"),
        1005
    );
    assert!(store
        .list_keys("thumbnails/g/")
        .await
        .expect("list")
        .is_empty());
    assert_eq!(
        store.list_keys("").await.expect("list all"),
        ["faces/g/img-0.json", "thumbnails/g2/img-0/m/0.aligned.jpg"]
    );
    // Idempotent: nothing left is no error.
    assert_eq!(
        store.delete_prefix("thumbnails/g/").await.expect("again"),
        0
    );
}
