from collections import Counter

from services.gateway.sharding import jump_hash, shard_of


def test_jump_hash_range_and_monotonicity():
    assert all(jump_hash(key, 1) == 0 for key in range(100))
    assert all(0 <= jump_hash(key, 7) < 7 for key in range(10_000))
    # Adding bucket n+1 only ever moves keys into the new bucket.
    for key in range(2000):
        for buckets in range(1, 12):
            before, after = jump_hash(key, buckets), jump_hash(key, buckets + 1)
            assert after in (before, buckets)


def test_ids_spread_evenly_and_stably():
    ids = [f"img-{i}" for i in range(20_000)]
    counts = Counter(shard_of(i, 4) for i in ids)
    assert set(counts) == {0, 1, 2, 3}
    assert max(counts.values()) / min(counts.values()) < 1.1
    assert [shard_of(i, 4) for i in ids[:50]] == [shard_of(i, 4) for i in ids[:50]]


def test_growing_the_shard_count_moves_few_ids():
    ids = [f"img-{i}" for i in range(20_000)]
    moved = sum(shard_of(i, 4) != shard_of(i, 5) for i in ids)
    # Ideal is 1/5 of the ids; each one that moves goes to the new shard.
    assert 0.17 < moved / len(ids) < 0.23
    assert all(shard_of(i, 5) == 4 for i in ids if shard_of(i, 4) != shard_of(i, 5))
