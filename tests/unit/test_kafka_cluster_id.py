"""The Kafka cluster id handed to `kafka-storage format` must parse as a value, not an option."""

import base64

from saga_testenv.stack import kafka_cluster_id


def test_cluster_ids_never_start_with_a_dash_and_decode_to_sixteen_bytes() -> None:
    # 2000 draws: a generator without the guard yields a leading "-" with probability 1 - (63/64)**2000 ~ 1
    ids = [kafka_cluster_id() for _ in range(2000)]
    assert not [i for i in ids if i.startswith("-")]
    assert all(len(base64.urlsafe_b64decode(i + "==")) == 16 for i in ids)
    assert len(set(ids)) == len(ids)
