"""Cache key layout: unchanged on one Redis (existing data stays readable), hash-tagged on a cluster."""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from gateway.cache.redis_client import is_cluster, plain_url
from gateway.cache.store import Keys


def test_single_redis_layout_is_the_one_data_was_written_with() -> None:
    k = Keys()
    assert k.entry("faq", "e1") == "dowse:cache:ns:faq:e:e1"
    assert (
        k.group("faq", "g") == "dowse:cache:ns:faq:g:g"
        and k.group_obs("faq", "g") == "dowse:cache:ns:faq:go:g"
    )
    assert k.ids("faq") == "dowse:cache:ns:faq:ids" and k.stats("faq") == "dowse:cache:ns:faq:stats"
    assert k.stream("faq") == k.stream("other") == "dowse:cache:stream"  # one shared stream
    assert k.namespaces == "dowse:cache:namespaces" and k.lookup("L") == "dowse:cache:l:L"


def test_cluster_layout_keeps_a_namespace_on_one_slot() -> None:
    k = Keys(cluster=True)
    keys = [k.entry("faq", "e1"), k.group("faq", "g"), k.group_obs("faq", "g"), k.ids("faq"), k.pooled("faq"),
            k.prior("faq"), k.stats("faq"), k.stream("faq"), k.ns("faq") + ":anything"]  # fmt: skip
    assert all(key.startswith("dowse:cache:ns:{faq}:") for key in keys)
    assert len({key_slot(key.encode()) for key in keys}) == 1
    # namespaces spread: 50 names land on many slots
    assert len({key_slot(k.ids(f"ns{i}").encode()) for i in range(50)}) > 40
    assert k.stream("a") != k.stream("b")


def test_cluster_urls_and_prefix() -> None:
    assert is_cluster("redis+cluster://h:7000") and is_cluster("rediss+cluster://h:7000")
    assert not is_cluster("redis://h:6379/0") and is_cluster("redis://h:6379", flag=True)
    assert plain_url("redis+cluster://h:7000") == "redis://h:7000"
    assert plain_url("rediss+cluster://u:p@h:7000") == "rediss://u:p@h:7000"
    with pytest.raises(ValueError, match="braces"):
        Keys("dowse:{x}")
