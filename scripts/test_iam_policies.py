#!/usr/bin/env python3
"""Checks scripts/iam_policies.py against the template and against moto's IAM enforcement.

Why: the IAM-enforced worker tests trust two things this file pins down: that iam_policies.py
prints the policies the stack deploys (with and without a customer KMS key), and what moto 5.2.5
does with them (which calls it allows, denies, and which IAM semantics it does not reproduce).
If a moto upgrade or a template change moves any of that, this fails before the worker tests
fail in a confusing way. Run by scripts/check-deploy.sh: .venv/bin/python scripts/test_iam_policies.py
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import boto3
import botocore.exceptions
from botocore.config import Config

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
BUCKET = "facegroup-iam-test"
failures: list[str] = []
checked = 0


def main() -> int:
    check_resolution()
    check_moto_enforcement()
    for f in failures:
        print(f"FAIL {f}", file=sys.stderr)
    print(f"test_iam_policies: {checked - len(failures)} of {checked} expectations met")
    return 1 if failures else 0


def expect(label: str, ok: bool) -> None:
    global checked
    checked += 1
    if not ok:
        failures.append(label)


def policies(*args: str) -> dict:
    out = subprocess.run([PY, str(REPO / "scripts/iam_policies.py"), *args],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def statements(docs: dict) -> dict[str, dict]:
    return {st["Sid"]: st for doc in docs.values() for st in doc["Statement"]}


def check_resolution() -> None:
    plain = policies("--param", f"BucketName={BUCKET}")
    expect("three roles printed", sorted(plain) == ["DetectionJobRole", "GroupingJobRole", "ScalerJobRole"])
    det = statements(plain["DetectionJobRole"])
    expect("detection lists only the photo prefix",
           det["ListPhotoPrefix"]["Condition"] == {"StringLike": {"s3:prefix": "photos/*"}}
           and det["ListPhotoPrefix"]["Resource"] == f"arn:aws:s3:::{BUCKET}")
    expect("detection writes faces/ and thumbnails/ only",
           det["WriteResultsAndThumbnails"]["Resource"]
           == [f"arn:aws:s3:::{BUCKET}/faces/*", f"arn:aws:s3:::{BUCKET}/thumbnails/*"])
    expect("detection lists and erases thumbnails/ only for its own erasures",
           det["ListThumbnailsPrefix"]["Condition"] == {"StringLike": {"s3:prefix": "thumbnails/*"}}
           and det["EraseOwnResults"]["Resource"]
           == [f"arn:aws:s3:::{BUCKET}/faces/*", f"arn:aws:s3:::{BUCKET}/thumbnails/*"])
    grp_plain = statements(plain["GroupingJobRole"])
    expect("grouping lists and deletes thumbnails/ (deletions), never writes them",
           grp_plain["ListThumbnailsPrefix"]["Condition"] == {"StringLike": {"s3:prefix": "thumbnails/*"}}
           and grp_plain["DeleteThumbnails"]["Action"] == "s3:DeleteObject"
           and grp_plain["DeleteThumbnails"]["Resource"] == f"arn:aws:s3:::{BUCKET}/thumbnails/*")
    expect("detection sends to the grouping queue",
           det["EnqueueGrouping"]["Resource"] == "arn:aws:sqs:us-east-1:123456789012:facegroup-grouping")
    expect("no key policy without KmsKeyArn", "use-stack-key" not in plain["DetectionJobRole"])
    key = "arn:aws:kms:us-east-1:123456789012:key/1234"
    with_key = policies("--param", f"BucketName={BUCKET}", "--param", f"KmsKeyArn={key}",
                        "--param", "GroupsPrefix=runs/", "--queue",
                        "GroupingQueue=http://localhost:1/123456789012/q-g")
    for role in ("DetectionJobRole", "GroupingJobRole"):
        expect(f"{role} may use the given key",
               statements(with_key[role]).get("UseTheStackKey", {}).get("Resource") == key)
    expect("scaler gets no key policy", "use-stack-key" not in with_key["ScalerJobRole"])
    grp = statements(with_key["GroupingJobRole"])
    expect("parameters and --queue are applied",
           grp["ReadWriteGroups"]["Resource"] == f"arn:aws:s3:::{BUCKET}/runs/*"
           and grp["ConsumeGroupingQueue"]["Resource"] == "arn:aws:sqs:us-east-1:123456789012:q-g")
    for role in ("DetectionJobRole", "GroupingJobRole"):
        expect(f"{role}: no event policies without a topic or bus",
               not {"publish-events-topic", "put-events-bus"} & set(plain[role]))
    topic = "arn:aws:sns:us-east-1:123456789012:facegroup-events"
    bus = "arn:aws:events:us-east-1:123456789012:event-bus/facegroup"
    with_events = policies("--param", f"BucketName={BUCKET}", "--param", f"EventsSnsTopicArn={topic}",
                           "--param", f"EventsBusArn={bus}")
    for role in ("DetectionJobRole", "GroupingJobRole"):
        st = statements(with_events[role])
        expect(f"{role} publishes to the configured topic only",
               st.get("PublishEvents", {}).get("Action") == "sns:Publish"
               and st.get("PublishEvents", {}).get("Resource") == topic)
        expect(f"{role} puts events on the configured bus only",
               st.get("PutEvents", {}).get("Action") == "events:PutEvents"
               and st.get("PutEvents", {}).get("Resource") == bus)
    expect("scaler gets no event policies",
           not {"publish-events-topic", "put-events-bus"} & set(with_events["ScalerJobRole"]))
    bad = subprocess.run([PY, str(REPO / "scripts/iam_policies.py")], capture_output=True, text=True)
    expect("a missing required parameter exits 2", bad.returncode == 2 and "BucketName" in bad.stderr)


def check_moto_enforcement() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([str(REPO / ".venv/bin/moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        run_moto_checks(url)
    finally:
        server.terminate()
        server.wait(10)


def run_moto_checks(url: str) -> None:
    cfg = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1})

    def client(service: str, key: tuple[str, str] = ("test", "test")):
        return boto3.client(service, endpoint_url=url, region_name="us-east-1", config=cfg,
                            aws_access_key_id=key[0], aws_secret_access_key=key[1])

    s3, sqs, iam = client("s3"), client("sqs"), client("iam")
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key="photos/a.jpg", Body=b"x")
    det_q = sqs.create_queue(QueueName="facegroup-detection")["QueueUrl"]
    grp_q = sqs.create_queue(QueueName="facegroup-grouping")["QueueUrl"]
    base = ["--param", f"BucketName={BUCKET}",
            "--queue", f"DetectionQueue={det_q}", "--queue", f"GroupingQueue={grp_q}"]
    users = {"det-aws": policies(*base)["DetectionJobRole"],
             "det": policies(*base, "--moto")["DetectionJobRole"],
             "grp": policies(*base, "--moto")["GroupingJobRole"],
             "scaler": policies(*base, "--moto")["ScalerJobRole"],
             "get-only": {"p": {"Version": "2012-10-17", "Statement": [
                 {"Effect": "Allow", "Action": "s3:GetObject",
                  "Resource": f"arn:aws:s3:::{BUCKET}/photos/*"}]}}}
    keys = {}
    for user, docs in users.items():
        iam.create_user(UserName=user)
        for name, doc in docs.items():
            iam.put_user_policy(UserName=user, PolicyName=name, PolicyDocument=json.dumps(doc))
        k = iam.create_access_key(UserName=user)["AccessKey"]
        keys[user] = (k["AccessKeyId"], k["SecretAccessKey"])
    # Enforcement from here on (the body is the number of requests still let through).
    urllib.request.urlopen(urllib.request.Request(
        f"{url}/moto-api/reset-auth", data=b"0", method="POST",
        headers={"Content-Type": "text/plain"}), timeout=10).read()

    def outcome(fn) -> str:
        try:
            fn()
            return "allowed"
        except botocore.exceptions.ClientError as e:
            status = e.response["ResponseMetadata"]["HTTPStatusCode"]
            body = str(e.response["Error"].get("Message", ""))
            if status == 403 or "AccessDenied" in body:
                return "denied"
            return f"{status} {e.response['Error'].get('Code')}"  # authorised, then failed

    def case(label: str, fn, want: str) -> None:
        got = outcome(fn)
        expect(f"{label}: want {want}, got {got}", got == want)

    case("default keys rejected once enforcing", lambda: s3.list_buckets(), "denied")
    det_s3, det_sqs = client("s3", keys["det"]), client("sqs", keys["det"])
    aws_sqs = client("sqs", keys["det-aws"])
    entry = [{"Id": "1", "ReceiptHandle": "x"}]
    case("det ReceiveMessage own queue", lambda: det_sqs.receive_message(QueueUrl=det_q, WaitTimeSeconds=0), "allowed")
    case("det ReceiveMessage other queue (ARN checked)", lambda: det_sqs.receive_message(QueueUrl=grp_q, WaitTimeSeconds=0), "denied")
    case("det SendMessage grouping queue", lambda: det_sqs.send_message(QueueUrl=grp_q, MessageBody="{}"), "allowed")
    case("det SendMessage own queue", lambda: det_sqs.send_message(QueueUrl=det_q, MessageBody="{}"), "denied")
    case("det ChangeMessageVisibility (checked, then bad handle)",
         lambda: det_sqs.change_message_visibility(QueueUrl=det_q, ReceiptHandle="x", VisibilityTimeout=0),
         "400 ReceiptHandleIsInvalid")
    case("det DeleteMessageBatch with --moto", lambda: det_sqs.delete_message_batch(QueueUrl=det_q, Entries=entry), "allowed")
    case("det DeleteMessageBatch, AWS policy as is (moto names the batch action)",
         lambda: aws_sqs.delete_message_batch(QueueUrl=det_q, Entries=entry), "denied")
    case("det ChangeMessageVisibilityBatch, AWS policy as is",
         lambda: aws_sqs.change_message_visibility_batch(
             QueueUrl=det_q, Entries=[{**entry[0], "VisibilityTimeout": 0}]), "denied")
    case("det GetQueueAttributes (not granted)", lambda: det_sqs.get_queue_attributes(QueueUrl=det_q), "denied")
    case("det GetObject photo", lambda: det_s3.get_object(Bucket=BUCKET, Key="photos/a.jpg"), "allowed")
    case("det GetObject missing photo", lambda: det_s3.get_object(Bucket=BUCKET, Key="photos/none.jpg"), "404 NoSuchKey")
    case("det PutObject faces/", lambda: det_s3.put_object(Bucket=BUCKET, Key="faces/g/i.json", Body=b"{}"), "allowed")
    case("det PutObject thumbnails/", lambda: det_s3.put_object(Bucket=BUCKET, Key="thumbnails/g/i.jpg", Body=b"x"), "allowed")
    case("det PutObject groups/ (outside)", lambda: det_s3.put_object(Bucket=BUCKET, Key="groups/g/x.json", Body=b"{}"), "denied")
    case("det DeleteObject faces/ (erasing its own result)", lambda: det_s3.delete_object(Bucket=BUCKET, Key="faces/g/i.json"), "allowed")
    case("det DeleteObject thumbnails/ (erasing its own)", lambda: det_s3.delete_object(Bucket=BUCKET, Key="thumbnails/g/i.jpg"), "allowed")
    case("det DeleteObject photos/ (not granted)", lambda: det_s3.delete_object(Bucket=BUCKET, Key="photos/a.jpg"), "denied")
    case("det ListObjectsV2 groups/: moto ignores the s3:prefix condition",
         lambda: det_s3.list_objects_v2(Bucket=BUCKET, Prefix="groups/"), "allowed")
    grp_s3 = client("s3", keys["grp"])
    case("grp GetObject missing latest.json", lambda: grp_s3.get_object(Bucket=BUCKET, Key="groups/g/latest.json"), "404 NoSuchKey")
    case("grp PutObject groups/", lambda: grp_s3.put_object(Bucket=BUCKET, Key="groups/g/r.json", Body=b"{}"), "allowed")
    case("grp PutObject faces/ (deletion rewrites)", lambda: grp_s3.put_object(Bucket=BUCKET, Key="faces/g/x.json", Body=b"{}"), "allowed")
    case("grp PutObject thumbnails/ (outside)", lambda: grp_s3.put_object(Bucket=BUCKET, Key="thumbnails/g/x.jpg", Body=b"x"), "denied")
    case("grp DeleteObject groups/ and faces/", lambda: [grp_s3.delete_object(Bucket=BUCKET, Key=k) for k in ("groups/g/r.json", "faces/g/x.json")], "allowed")
    case("grp DeleteObject thumbnails/ (deletion jobs)", lambda: grp_s3.delete_object(Bucket=BUCKET, Key="thumbnails/g/x.jpg"), "allowed")
    case("grp ListObjectsV2 thumbnails/", lambda: grp_s3.list_objects_v2(Bucket=BUCKET, Prefix="thumbnails/g/"), "allowed")
    case("grp DeleteObject photos/ (not granted)", lambda: grp_s3.delete_object(Bucket=BUCKET, Key="photos/a.jpg"), "denied")
    case("GetObject of a missing key without ListBucket: moto says 404 (AWS: 403)",
         lambda: client("s3", keys["get-only"]).get_object(Bucket=BUCKET, Key="photos/none.jpg"), "404 NoSuchKey")
    sc_sqs, sc_batch = client("sqs", keys["scaler"]), client("batch", keys["scaler"])
    case("scaler GetQueueAttributes", lambda: sc_sqs.get_queue_attributes(
        QueueUrl=det_q, AttributeNames=["ApproximateNumberOfMessages"]), "allowed")
    case("scaler ReceiveMessage (not granted)", lambda: sc_sqs.receive_message(QueueUrl=det_q, WaitTimeSeconds=0), "denied")
    case("scaler batch ListJobs with --moto (checked, then no such queue)",
         lambda: sc_batch.list_jobs(jobQueue="facegroup-gpu"), "400 ClientException")
    case("det batch ListJobs (not granted)",
         lambda: client("batch", keys["det"]).list_jobs(jobQueue="facegroup-gpu"), "denied")


if __name__ == "__main__":
    os.environ.pop("AWS_PROFILE", None)
    sys.exit(main())
