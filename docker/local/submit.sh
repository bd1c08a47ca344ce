#!/usr/bin/env bash
# docker-compose `submit` service: one detection job per photo under s3://$BUCKET/photos/, wait until
# the detection queue is empty, one full grouping job for the gallery, then print its groups.
# Message shapes: see the README's "Message contracts" (worker) section.
set -euo pipefail

queue_depth() {
    aws sqs get-queue-attributes --queue-url "$1" \
        --attribute-names ApproximateNumberOfMessages ApproximateNumberOfMessagesNotVisible \
        --query 'sum([to_number(Attributes.ApproximateNumberOfMessages), to_number(Attributes.ApproximateNumberOfMessagesNotVisible)])' \
        --output text
}

keys="$(aws s3api list-objects-v2 --bucket "$BUCKET" --prefix photos/ --query 'Contents[].Key' --output text)"
n=0
for key in $keys; do
    image_id="$(basename "${key%.*}")"
    aws sqs send-message --queue-url "$DETECTION_QUEUE_URL" --output text --query MessageId \
        --message-body "{\"image_id\":\"$image_id\",\"gallery_id\":\"$GALLERY_ID\",\"bucket\":\"$BUCKET\",\"key\":\"$key\"}" >/dev/null
    n=$((n + 1))
done
echo "submitted $n detection jobs for gallery $GALLERY_ID"

deadline=$((SECONDS + ${TIMEOUT_SECS:-900}))
until [ "$(queue_depth "$DETECTION_QUEUE_URL")" = "0" ]; do
    [ "$SECONDS" -lt "$deadline" ] || { echo "timed out waiting for detection" >&2; exit 1; }
    sleep 5
done
echo "detection done"

aws sqs send-message --queue-url "$GROUPING_QUEUE_URL" --output text --query MessageId \
    --message-body "{\"gallery_id\":\"$GALLERY_ID\",\"mode\":\"full\"}" >/dev/null
echo "submitted a full grouping job"
until [ "$(queue_depth "$GROUPING_QUEUE_URL")" = "0" ] \
    && aws s3api head-object --bucket "$BUCKET" --key "groups/$GALLERY_ID/latest.json" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || { echo "timed out waiting for grouping" >&2; exit 1; }
    sleep 5
done
echo "groups (s3://$BUCKET/groups/$GALLERY_ID/latest.json):"
aws s3 cp "s3://$BUCKET/groups/$GALLERY_ID/latest.json" -
