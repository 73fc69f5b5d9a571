"""Vectors on the wire: packed float32 little-endian bytes; the old repeated field is read."""

import numpy as np
import pytest

from services.common.errors import InvalidArgumentError
from services.common.proto_convert import vector_from_proto, vectors_from_proto, vectors_to_proto
from visearch.v1 import common_pb2


def test_writers_send_packed_little_endian_bytes_that_round_trip_exactly():
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((5, 7)).astype(np.float32)
    messages = vectors_to_proto(vectors)
    assert all(m.packed and not m.values for m in messages)
    assert messages[2].packed == vectors[2].astype("<f4").tobytes()
    back = vectors_from_proto(messages)
    assert back.dtype == np.float32 and np.array_equal(back, vectors)
    assert vectors_from_proto([]).shape == (0, 0)


def test_readers_accept_the_old_repeated_field_and_a_mix():
    old = common_pb2.Vector(values=[1.0, 2.0, 3.0])
    new = vectors_to_proto(np.array([[4.0, 5.0, 6.0]], np.float32))[0]
    assert np.array_equal(vector_from_proto(old), np.array([1, 2, 3], np.float32))
    both = vectors_from_proto([old, new])
    assert np.array_equal(both, np.array([[1, 2, 3], [4, 5, 6]], np.float32))
    # a serialised round trip keeps the field (what a new reader sees from an old writer)
    parsed = common_pb2.Vector.FromString(old.SerializeToString())
    assert np.array_equal(vector_from_proto(parsed), np.array([1, 2, 3], np.float32))


def test_bad_packed_vectors_are_refused():
    with pytest.raises(InvalidArgumentError, match="multiple of 4"):
        vector_from_proto(common_pb2.Vector(packed=b"\x00" * 6))
    with pytest.raises(InvalidArgumentError, match="share one non-zero dimension"):
        vectors_from_proto(
            vectors_to_proto(np.zeros((1, 3), np.float32))
            + [common_pb2.Vector(packed=np.zeros(2, "<f4").tobytes())]
        )
