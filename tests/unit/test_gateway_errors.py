"""Status codes a person can act on (issue 12, item 6): each case failed on the earlier main
with a retryable UNAVAILABLE, an INTERNAL, a silent OK or a message holding a Python repr."""

import pytest

from services.common.errors import (
    AlreadyExistsError,
    InvalidArgumentError,
    UnavailableError,
)
from services.common.grpc_server import LoadingSlot
from services.common.imaging import ImageLimits, decode_rgb
from services.gateway import query_expansion as qe
from services.gateway.ports import IngestItem, SearchQuery
from services.gateway.servicer import GatewayServicer
from tests.unit.test_gateway_core import InProcessShard, ingest_three, jpeg
from tests.unit.test_gateway_core import gateway as gateway_fixture
from visearch.v1 import gateway_pb2

gateway = gateway_fixture  # the same fixture, under the name the tests take


@pytest.mark.parametrize(
    "key", ["images/../models/x", "images//x", "/images/x", "images/./x", "images/x\\..\\y"]
)
def test_an_object_key_that_leaves_its_folder_is_invalid_not_unavailable(gateway, key):
    item = IngestItem("a", object_key=key)
    gateway.create_collection("c")
    with pytest.raises(InvalidArgumentError, match="object key"):
        gateway.ingest("c", [item], create=True, timeout_s=None)
    with pytest.raises(InvalidArgumentError, match="object key"):
        gateway.search(SearchQuery("c", object_key=key), None)


def test_an_unknown_rerank_enum_value_is_invalid_argument(gateway):
    slot: LoadingSlot = LoadingSlot("gateway")
    slot.set(gateway)
    servicer = GatewayServicer(slot)
    with pytest.raises(InvalidArgumentError, match="default_rerank 99 is not a RerankMode"):
        servicer.CreateCollection(
            gateway_pb2.CreateCollectionRequest(name="c", default_rerank=99), None
        )
    with pytest.raises(InvalidArgumentError, match="rerank 7 is not a RerankMode"):
        servicer.Search(gateway_pb2.SearchRequest(collection="c", rerank=7), None)


def test_creating_an_existing_collection_with_other_settings_is_already_exists(gateway):
    gateway.create_collection("c", default_rerank="geometric", rerank_depth=40)
    same = gateway.create_collection("c", default_rerank="geometric")  # idempotent
    assert same.rerank_depth == 40
    assert gateway.create_collection("c").default_rerank == "geometric"  # names nothing
    with pytest.raises(AlreadyExistsError, match="rerank_depth is 40, asked 60"):
        gateway.create_collection("c", rerank_depth=60)
    with pytest.raises(AlreadyExistsError, match="default_rerank is 'geometric', asked 'none'"):
        gateway.create_collection("c", default_rerank="none")
    with pytest.raises(AlreadyExistsError, match="qe_verified"):
        gateway.create_collection("c", query_expansion=qe.OFF)
    ingest_three(gateway)  # an ingest that may create the collection still works


def test_undecodable_bytes_name_the_problem_without_a_python_repr():
    for data in (b"not an image at all" * 10, jpeg(1)[:60]):
        with pytest.raises(InvalidArgumentError) as caught:
            decode_rgb(data, ImageLimits(max_bytes=1_000_000))
        message = caught.value.message
        assert "cannot be decoded" in message
        assert " at 0x" not in message and "<" not in message


class RefusingShard(InProcessShard):
    def search(self, collection, queries, k, search_filter, timeout, vectors_for_top=0):
        raise InvalidArgumentError(f"shard {self.shard}: query has 3 dims, the index 192")


def test_a_shard_refusing_the_request_is_an_error_not_a_missing_shard(gateway):
    ingest_three(gateway)
    gateway.services.shards[1] = RefusingShard(1)
    with pytest.raises(InvalidArgumentError, match="query has 3 dims"):
        gateway.search(SearchQuery("c", image=jpeg(1), rerank="none"), None)
    gateway.services.shards[1] = InProcessShard(1, broken=True)  # down: partial, as before
    outcome = gateway.search(SearchQuery("c", image=jpeg(1), rerank="none"), None)
    assert outcome.partial and outcome.missing_shards == [1]
    with pytest.raises(UnavailableError):
        gateway.search(SearchQuery("c", image=jpeg(1), rerank="none", require_complete=True), None)


class DownVerifier:
    def rerank(self, query, candidates, timeout, return_matches=False):
        raise UnavailableError("verifier: connection refused")


def test_a_verifier_failure_returns_the_global_order_flagged(gateway):
    ingest_three(gateway)
    query = SearchQuery("c", image=jpeg(1), k=3, rerank="geometric")
    verified = gateway.search(query, None)  # ReverseVerifier: the global order upside down
    assert not verified.rerank_degraded
    plain = gateway.search(SearchQuery("c", image=jpeg(1), k=3, rerank="none"), None)
    object.__setattr__(gateway.services, "verifier", DownVerifier())
    degraded = gateway.search(query, None)
    assert degraded.rerank_degraded and not degraded.partial
    assert "geometric re-rank failed" in degraded.rerank_degraded_reason
    assert "connection refused" in degraded.rerank_degraded_reason
    assert [h.id for h in degraded.hits] == [h.id for h in plain.hits]
    assert [h.id for h in verified.hits] != [h.id for h in plain.hits]
