#!/bin/bash
# As the admin: makes (or changes) the SCRAM credential of every principal from its Secret
# kafka-user-<principal>, then grants each principal its ACLs. Idempotent: an existing ACL is not
# added twice, and a credential is simply set again. To rotate a password: change the Secret, run this
# Job again, restart the pods that use it (docs/operations.md, "Security").
set -euo pipefail
source "${KAFKA_CONFIG_DIR:-/etc/kafka-config}/admin-client.sh"

upsert() {
  local file=$scratch/scram.properties
  # through a file, not the tool's command line; the value is what --add-config puts between brackets
  printf 'SCRAM-SHA-512=password=%s\n' "$(cat "$users/$1/password")" >"$file"
  "$bin/kafka-configs.sh" "${admin[@]}" --alter --entity-type users \
    --entity-name "$(cat "$users/$1/username")" --add-config-file "$file"
  rm -f "$file"
}
# (saga-admin is the one not set here: this Job authenticates with it; see the rotation procedure)
upsert saga-broker
upsert saga-operator
for participant in $PARTICIPANTS; do
  upsert "saga-participant-$participant"
done

acl() { "$bin/kafka-acls.sh" "${admin[@]}" --add "$@"; }
operator=User:saga-operator
# The operator: sends every command, reads every reply, commits its group's offsets.
acl --allow-principal "$operator" --operation Write --resource-pattern-type prefixed --topic saga.commands.
acl --allow-principal "$operator" --operation Read --resource-pattern-type prefixed --topic saga.replies.
acl --allow-principal "$operator" --operation Read --group saga-operator
# ... and sets aside the replies it cannot use
acl --allow-principal "$operator" --operation Write --topic saga.replies.dlq
for participant in $PARTICIPANTS; do
  principal="User:saga-participant-$participant"
  # P reads its own commands only, in its own group ...
  acl --allow-principal "$principal" --operation Read \
    --topic "saga.commands.$participant" --group "saga-participant-$participant"
  # ... and writes its own replies and its own dead letters only
  acl --allow-principal "$principal" --operation Write \
    --topic "saga.replies.$participant" --topic "saga.commands.$participant.dlq"
done
"$bin/kafka-acls.sh" "${admin[@]}" --list
