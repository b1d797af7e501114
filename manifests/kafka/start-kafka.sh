#!/bin/bash
# Starts the broker without the image's own entry script (/etc/kafka/docker/run), which writes into
# /opt/kafka/config and so needs a writable root filesystem. Here everything written goes to /tmp
# (an emptyDir) or to the data volume.
set -euo pipefail
props=/tmp/server.properties
cp /etc/kafka-config/server.properties "$props"
echo "advertised.listeners=PLAINTEXT://${KAFKA_ADVERTISED_HOST}:9092" >>"$props"
# Formats the data volume on first start; --ignore-formatted makes later starts a no-op.
/opt/kafka/bin/kafka-storage.sh format --ignore-formatted --cluster-id "$KAFKA_CLUSTER_ID" --config "$props"
exec /opt/kafka/bin/kafka-server-start.sh "$props"
