#!/bin/bash
# Starts the broker without the image's own entry script (/etc/kafka/docker/run), which writes into
# /opt/kafka/config and so needs a writable root filesystem. Here everything written goes to /tmp
# (an emptyDir, nothing else can read it) or to the data volume.
#
# The paths are the pod's (statefulset.yaml); tests/deploy runs this same script on a local JVM with
# other ones through these variables.
set -euo pipefail
umask 077
bin=${KAFKA_BIN:-/opt/kafka/bin}
config=${KAFKA_CONFIG_DIR:-/etc/kafka-config}
tls=${KAFKA_TLS_DIR:-/etc/kafka-tls}
users=${KAFKA_USERS_DIR:-/etc/kafka-users}
scratch=${KAFKA_SCRATCH_DIR:-/tmp}
props=$scratch/server.properties
cp "$config/server.properties" "$props"
echo "advertised.listeners=BROKER://${KAFKA_ADVERTISED_HOST}:${KAFKA_PORT:-9092}" >>"$props"

# The broker's own principal, for its connection to its controller (and to other brokers, had it any).
broker_user=$(cat "$users/saga-broker/username")
broker_password=$(cat "$users/saga-broker/password")
jaas="org.apache.kafka.common.security.scram.ScramLoginModule required username=\"$broker_user\" password=\"$broker_password\";"
echo "listener.name.broker.scram-sha-512.sasl.jaas.config=$jaas" >>"$props"
echo "listener.name.controller.scram-sha-512.sasl.jaas.config=$jaas" >>"$props"

# One PEM keystore: the private key, then the certificate.
mkdir -p "$scratch/kafka-tls"
cat "$tls/tls.key" "$tls/tls.crt" >"$scratch/kafka-tls/keystore.pem"

# Formats the data volume on first start, with the SCRAM credentials of the broker and the admin in the
# first metadata records (the broker cannot reach its controller without its own); --ignore-formatted
# makes later starts a no-op. Every other principal is created, and rotated, by the Job kafka-access.
admin_user=$(cat "$users/saga-admin/username")
admin_password=$(cat "$users/saga-admin/password")
"$bin/kafka-storage.sh" format --ignore-formatted --cluster-id "$KAFKA_CLUSTER_ID" --config "$props" \
  --add-scram "SCRAM-SHA-512=[name=$broker_user,password=$broker_password]" \
  --add-scram "SCRAM-SHA-512=[name=$admin_user,password=$admin_password]"
unset broker_password admin_password jaas
exec "$bin/kafka-server-start.sh" "$props"
