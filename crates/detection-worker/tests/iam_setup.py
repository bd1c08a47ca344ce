#!/usr/bin/env python3
"""Set-up of the IAM-enforced end-to-end test (tests/iam.rs) on a running moto_server.

Reads the resolved role policies (scripts/iam_policies.py --moto output) on stdin, creates one
IAM user per role with exactly those inline policies, an `admin` user for the test driver, and
the Batch job queue the scaler counts jobs in; then turns moto's IAM enforcement on. Prints
{"DetectionJobRole": {"key": ..., "secret": ...}, ..., "admin": {...}} on stdout.

Usage: iam_setup.py ENDPOINT JOB_QUEUE_NAME < policies.json
Why Python: boto3 comes with moto in .venv, so the test needs no IAM SDK crate just for set-up.
"""

import json
import sys
import urllib.request

import boto3


def main() -> int:
    endpoint, job_queue = sys.argv[1], sys.argv[2]
    policies = json.load(sys.stdin)

    def client(service):
        return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    iam = client("iam")
    keys = {}
    users = dict(policies)
    users["admin"] = {"admin": {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "*", "Resource": "*"}]}}
    for role, docs in users.items():
        user = f"user-{role}"
        iam.create_user(UserName=user)
        for name, doc in docs.items():
            iam.put_user_policy(UserName=user, PolicyName=name, PolicyDocument=json.dumps(doc))
        k = iam.create_access_key(UserName=user)["AccessKey"]
        keys[role] = {"key": k["AccessKeyId"], "secret": k["SecretAccessKey"]}

    # The scaler counts this queue's jobs; moto answers for an unknown queue with an error.
    batch = client("batch")
    service_role = iam.create_role(
        RoleName="batch-service",
        AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Principal": {"Service": "batch.amazonaws.com"},
             "Action": "sts:AssumeRole"}]}))["Role"]["Arn"]
    ce = batch.create_compute_environment(
        computeEnvironmentName="facegroup-ce", type="UNMANAGED", state="ENABLED",
        serviceRole=service_role)
    batch.create_job_queue(jobQueueName=job_queue, state="ENABLED", priority=1,
                           computeEnvironmentOrder=[{"order": 1,
                                                     "computeEnvironment": ce["computeEnvironmentArn"]}])

    # Enforcement from the next request on (moto 5.2.5 reads the body as the number of
    # requests still let through unauthenticated; it must be sent as text/plain).
    req = urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=b"0", method="POST",
                                 headers={"Content-Type": "text/plain"})
    with urllib.request.urlopen(req) as resp:
        if resp.status != 200:
            print(f"reset-auth answered {resp.status}", file=sys.stderr)
            return 1
    json.dump(keys, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
