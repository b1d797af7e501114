"""Sagas sharded among the operator's replicas by the partition of their key (docs/architecture.md, "Several
replicas").

A saga's *shard* is the partition its uid maps to (`saga_protocol.partition_for`, Kafka's key hash): every
reply to it is keyed by its uid, so it lands on partition `shard` of every `saga.replies.<p>` (all reply
topics have the same partition count). The replicas share one consumer group over the reply topics, and
`ShardAssignor`, the group's assignor, gives each shard to one member and partition `k` of *every* reply topic
to the owner of shard `k`. Kafka's group membership is then the engine: a replica that stops heartbeating for
the session timeout loses its shards to the others.

Invariants the assignor keeps:
- every shard `0 .. P-1` has exactly one owner among the members, P the largest partition count of the
  subscribed reply topics;
- partition `k` of a topic goes to the owner of shard `k`, or to nobody when that owner does not read the
  topic yet (it subscribes before it sends the first command there, so no reply of its sagas is waiting);
- a member keeps the shards it had (it says which in its join metadata) as far as an even spread allows, so
  a member joining or leaving moves only the shards it must.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from aiokafka.cluster import ClusterMetadata
from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment, ConsumerProtocolMemberMetadata

from saga_protocol.partition import partition_for

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ownership:
    """The shards this replica drives. `partitions` None: unsharded, it owns every saga (one replica)."""

    partitions: int | None
    shards: frozenset[int] = frozenset()

    def shard_of(self, uid: str) -> int:
        return partition_for(uid.encode(), self.partitions or 1)

    def owns(self, uid: str) -> bool:
        return self.partitions is None or self.shard_of(uid) in self.shards

    def owns_shard(self, shard: int) -> bool:
        return self.partitions is None or shard in self.shards

    @property
    def sharded(self) -> bool:
        return self.partitions is not None


#: One replica, no group: every saga is its own (unit tests, and the operator without SAGA_PARTICIPANTS).
EVERYTHING = Ownership(None)


def spread(members: Iterable[str], shards: int, previous: Mapping[str, Iterable[int]]) -> dict[str, list[int]]:
    """Each shard `0 .. shards-1` to one member: an even spread (sizes differ by at most one; the members
    first in order take the larger share), keeping each member's previous shards where that spread allows."""
    order = sorted(members)
    if not order:
        return {}
    base, extra = divmod(shards, len(order))
    room = {m: base + (1 if i < extra else 0) for i, m in enumerate(order)}
    owned: dict[str, list[int]] = {m: [] for m in order}
    taken: set[int] = set()
    for member in order:
        for shard in sorted(set(previous.get(member, ()))):
            if 0 <= shard < shards and shard not in taken and len(owned[member]) < room[member]:
                owned[member].append(shard)
                taken.add(shard)
    free = iter(s for s in range(shards) if s not in taken)
    for member in order:
        while len(owned[member]) < room[member]:
            owned[member].append(next(free))
    return owned


class ShardAssignor(AbstractPartitionAssignor):  # type: ignore[misc]
    """The group's assignment strategy. One instance per consumer: it remembers this member's shards (sent as
    join metadata, so the leader keeps them in place) and learns the new ones from the assignment."""

    name = "saga-shards"
    version = 0

    def __init__(self) -> None:
        self.ownership = Ownership(partitions=0)  # sharded, owning nothing until the first assignment

    def metadata(self, topics: Iterable[str]) -> ConsumerProtocolMemberMetadata:
        data = json.dumps({"shards": sorted(self.ownership.shards)}).encode()
        return ConsumerProtocolMemberMetadata(self.version, sorted(topics), data)

    @classmethod
    def assign(
        cls, cluster: ClusterMetadata, members: Mapping[str, ConsumerProtocolMemberMetadata]
    ) -> dict[str, ConsumerProtocolMemberAssignment]:
        counts: dict[str, int] = {}
        for metadata in members.values():
            for topic in metadata.subscription:
                partitions = cluster.partitions_for_topic(topic)
                if partitions:
                    counts[topic] = len(partitions)
        shards = max(counts.values(), default=0)
        if len(set(counts.values())) > 1:
            log.warning("reply topics with different partition counts %s: sagas follow the largest, %d", counts, shards)
        previous = {member: _shards_of(metadata.user_data) for member, metadata in members.items()}
        owners = spread(members, shards, previous)
        owner_of = {shard: member for member, owned in owners.items() for shard in owned}
        topics: dict[str, dict[str, list[int]]] = {member: {} for member in members}
        for topic, count in counts.items():
            for partition in range(count):
                owner = owner_of.get(partition)
                if owner is not None and topic in members[owner].subscription:
                    topics[owner].setdefault(topic, []).append(partition)
        return {
            member: ConsumerProtocolMemberAssignment(
                cls.version,
                sorted(topics[member].items()),
                json.dumps({"shards": owners.get(member, []), "of": shards}).encode(),
            )
            for member in members
        }

    def on_assignment(self, assignment: ConsumerProtocolMemberAssignment) -> None:
        try:
            data = json.loads(assignment.user_data or b"{}")
            self.ownership = Ownership(int(data.get("of", 0)), frozenset(int(s) for s in data.get("shards", [])))
        except (ValueError, TypeError, AttributeError):
            # Another strategy's leader (a replica of an older version): own what the partitions say.
            log.warning("assignment without shard data: owning the partitions assigned")
            parts = {p for _, partitions in assignment.assignment for p in partitions}
            self.ownership = Ownership(max(parts, default=-1) + 1, frozenset(parts))


def _shards_of(user_data: bytes | None) -> list[int]:
    try:
        return [int(s) for s in json.loads(user_data or b"{}").get("shards", [])]
    except (ValueError, TypeError, AttributeError):
        return []
