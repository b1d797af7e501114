"""The shard assignor's pure logic (adapters.shards): every shard one owner, an even spread, stickiness, and
partition k of every reply topic to the owner of shard k."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from saga_operator.adapters.shards import EVERYTHING, Ownership, ShardAssignor, spread
from saga_protocol.partition import partition_for

MEMBERS = st.lists(st.text("abcdef", min_size=1, max_size=4), min_size=1, max_size=6, unique=True)


@given(
    members=MEMBERS,
    shards=st.integers(0, 24),
    previous=st.dictionaries(st.text("abcdef"), st.lists(st.integers(-2, 30))),
)
def test_every_shard_has_one_owner_and_the_spread_is_even(
    members: list[str], shards: int, previous: dict[str, list[int]]
) -> None:
    owners = spread(members, shards, previous)
    owned = sorted(s for o in owners.values() for s in o)
    assert owned == list(range(shards))
    sizes = [len(o) for o in owners.values()]
    assert max(sizes) - min(sizes) <= 1


@given(members=MEMBERS, shards=st.integers(1, 24))
def test_a_member_leaving_moves_only_its_own_shards(members: list[str], shards: int) -> None:
    before = spread(members, shards, {})
    gone = members[0]
    after = spread(members[1:], shards, before)
    for member, owned in after.items():
        # a survivor keeps every shard it had, unless the even spread shrinks its share
        assert set(before[member]) <= set(owned) or len(owned) < len(before[member]), (member, before, after)
    if len(members) > 1:
        assert set().union(*map(set, after.values())) == set(range(shards))
    assert gone not in after


class _Cluster:
    def __init__(self, topics: dict[str, int]) -> None:
        self.topics = topics

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        count = self.topics.get(topic)
        return None if count is None else set(range(count))


class _Metadata:
    def __init__(self, topics: list[str], user_data: bytes = b"") -> None:
        self.subscription = topics
        self.user_data = user_data


def test_partition_k_of_every_topic_goes_to_the_owner_of_shard_k() -> None:
    cluster: Any = _Cluster({"saga.replies.a": 6, "saga.replies.b": 6})
    members: Any = {
        "m1": _Metadata(["saga.replies.a", "saga.replies.b"]),
        "m2": _Metadata(["saga.replies.a"]),  # has not followed b yet
    }
    result = ShardAssignor.assign(cluster, members)
    for member, assignment in result.items():
        shards = set(json.loads(assignment.user_data)["shards"])
        for topic, partitions in assignment.assignment:
            assert set(partitions) == shards, (member, topic)
        topics = {topic for topic, _ in assignment.assignment}
        assert topics == set(members[member].subscription)
    # b's partitions of m2's shards wait for m2 to read b (nobody else reads them)
    assigned_b = {p for a in result.values() for t, ps in a.assignment if t == "saga.replies.b" for p in ps}
    assert assigned_b == set(json.loads(result["m1"].user_data)["shards"])


def test_a_member_learns_its_shards_and_says_them_when_it_joins_again() -> None:
    assignor = ShardAssignor()
    assert assignor.ownership.sharded and not assignor.ownership.shards
    cluster: Any = _Cluster({"saga.replies.a": 3})
    result = ShardAssignor.assign(cluster, {"m1": _Metadata(["saga.replies.a"])})
    assignor.on_assignment(result["m1"])
    assert assignor.ownership == Ownership(3, frozenset({0, 1, 2}))
    assert json.loads(assignor.metadata(["saga.replies.a"]).user_data) == {"shards": [0, 1, 2]}


def test_a_saga_is_owned_by_the_shard_of_its_uid() -> None:
    uid = "6f1c2f55-55a8-4d0e-9d7b-1f1e2a3b4c5d"
    shard = partition_for(uid.encode(), 6)
    assert Ownership(6, frozenset({shard})).owns(uid)
    assert not Ownership(6, frozenset(set(range(6)) - {shard})).owns(uid)
    assert EVERYTHING.owns(uid) and not EVERYTHING.sharded
