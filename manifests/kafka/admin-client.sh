# Sourced by the Jobs' scripts: a Java client configuration that authenticates as the admin (from the
# Secret kafka-user-saga-admin) over SASL_SSL and trusts the CA in the ConfigMap kafka-ca; then waits
# until the broker answers. Sets "bin" (Kafka's scripts), "users" (the principals' Secrets) and the array
# "admin" (the tools' connection arguments). Other paths, for tests/deploy, through the variables below.
umask 077
bin=${KAFKA_BIN:-/opt/kafka/bin}
users=${KAFKA_USERS_DIR:-/etc/kafka-users}
scratch=${KAFKA_SCRATCH_DIR:-/tmp}
admin_properties=$scratch/admin.properties
{
  echo "security.protocol=SASL_SSL"
  echo "sasl.mechanism=SCRAM-SHA-512"
  echo "sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username=\"$(cat "$users/saga-admin/username")\" password=\"$(cat "$users/saga-admin/password")\";"
  echo "ssl.truststore.type=PEM"
  echo "ssl.truststore.location=${KAFKA_CA_DIR:-/etc/kafka-ca}/ca.crt"
} >"$admin_properties"
admin=(--bootstrap-server "$BOOTSTRAP" --command-config "$admin_properties")
until "$bin/kafka-topics.sh" "${admin[@]}" --list >/dev/null; do
  echo "waiting for Kafka at $BOOTSTRAP (as saga-admin)"; sleep 5
done
