#!/usr/bin/env bash
# docker-compose `init` service: queues with dead-letter queues, the bucket, the sample photos.
# Idempotent (create-queue/create-bucket on existing resources succeed or are skipped).
set -euo pipefail

visibility=1800        # 30 minutes; the workers' heartbeat extends it while a job runs
max_receive=5          # deliveries before a message moves to the dead-letter queue
retention=1209600      # 14 days, the SQS maximum, on the dead-letter queues

for name in facegroup-detection facegroup-grouping; do
    dlq_url="$(aws sqs create-queue --queue-name "$name-dlq" \
        --attributes "MessageRetentionPeriod=$retention" --query QueueUrl --output text)"
    dlq_arn="$(aws sqs get-queue-attributes --queue-url "$dlq_url" \
        --attribute-names QueueArn --query Attributes.QueueArn --output text)"
    redrive="{\"deadLetterTargetArn\":\"$dlq_arn\",\"maxReceiveCount\":\"$max_receive\"}"
    attributes="$(printf '{"VisibilityTimeout":"%s","ReceiveMessageWaitTimeSeconds":"20","RedrivePolicy":%s}' \
        "$visibility" "$(printf '%s' "$redrive" | sed 's/"/\\"/g; s/.*/"&"/')")"
    url="$(aws sqs create-queue --queue-name "$name" --attributes "$attributes" --query QueueUrl --output text)"
    aws sqs set-queue-attributes --queue-url "$url" --attributes "$attributes"
    echo "queue    $url (DLQ $dlq_arn, visibility ${visibility}s, maxReceiveCount $max_receive)"
done

aws s3api head-bucket --bucket "$BUCKET" >/dev/null 2>&1 || aws s3api create-bucket --bucket "$BUCKET" >/dev/null
echo "bucket   s3://$BUCKET"

shopt -s nullglob
photos=("$PHOTOS_DIR"/*.jpg "$PHOTOS_DIR"/*.jpeg "$PHOTOS_DIR"/*.png "$PHOTOS_DIR"/*.webp)
if [ "${#photos[@]}" -eq 0 ]; then
    echo "no sample photos in $PHOTOS_DIR: run scripts/setup.sh (or python3 scripts/fetch.py images) first" >&2
    exit 1
fi
aws s3 cp --recursive --quiet "$PHOTOS_DIR" "s3://$BUCKET/photos/"
echo "uploaded ${#photos[@]} photos to s3://$BUCKET/photos/"
