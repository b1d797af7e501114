#!/bin/bash
# Creates the saga topics as the admin, the only principal that may create topics. Idempotent
# (--if-not-exists): re-running it is harmless. Per participant P (PARTICIPANTS): its command topic
# saga.commands.P and its reply topic saga.replies.P (6 partitions: the operator's
# SAGA_TOPIC_PARTITIONS) and P's dead-letter topic saga.commands.P.dlq; once, saga.replies.dlq, where the
# operator sets aside the replies it cannot use (dead-letter topics: 1 partition, only people read them).
# A reply topic per participant: the topic a reply arrives on says who sent it, and the ACLs let only P
# write there (access.sh).
set -euo pipefail
source "${KAFKA_CONFIG_DIR:-/etc/kafka-config}/admin-client.sh"
topics=$bin/kafka-topics.sh
create() {
  "$topics" "${admin[@]}" --create --if-not-exists --topic "$1" --partitions "$2" --replication-factor 1
}
create saga.replies.dlq 1
for participant in $PARTICIPANTS; do
  create "saga.commands.$participant" 6
  create "saga.commands.$participant.dlq" 1
  create "saga.replies.$participant" 6
done
"$topics" "${admin[@]}" --list
