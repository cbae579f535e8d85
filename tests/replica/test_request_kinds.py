"""The one table of request kinds (shards/requests.py) covers the wire definitions exactly."""

from shards.requests import REQUEST_KINDS
from shards.shard_service import ShardService
from tessera.api.internal_pb2 import ShardRequest, ShardResponse


def test_every_request_kind_has_a_row_and_every_row_a_kind():
    kinds = {field.name for field in ShardRequest.DESCRIPTOR.oneofs_by_name["request"].fields}
    assert set(REQUEST_KINDS) == kinds


def test_every_row_names_a_service_method_and_a_response_field():
    answers = {field.name for field in ShardResponse.DESCRIPTOR.oneofs_by_name["response"].fields}
    for kind, row in REQUEST_KINDS.items():
        assert callable(getattr(ShardService, row.serve, None)), kind
        assert row.answer in answers, kind
        assert (row.serve == "write") == (row.to_store is not None), kind
