"""Authentication and per-collection roles at the gateway (a gRPC server interceptor).

Every `visearch.v1.Gateway` call needs `authorization: Bearer <API key>` metadata whose
key (services.common.api_keys) holds the method's role on the request's collection;
health and reflection stay open. A method missing from `METHOD_POLICY` needs `admin:*`
(fail closed). The interceptor sits inside the error interceptor, so a refusal is counted
like any other status.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc

from services.common.api_keys import ALL_COLLECTIONS, CURRENT_KEY, ApiKeyRecord, ApiKeys
from services.common.errors import UnauthenticatedError, VisearchError

SERVICE_PREFIX = "/visearch.v1.Gateway/"
AUTH_HEADER = "authorization"


@dataclass(frozen=True)
class MethodPolicy:
    role: str
    # The request field naming the collection ("" = every collection, `*`).
    collection_field: str = "collection"


METHOD_POLICY: dict[str, MethodPolicy] = {
    "Search": MethodPolicy("read"),
    "Get": MethodPolicy("read"),
    "GetImage": MethodPolicy("read"),
    "Stats": MethodPolicy("read"),
    "GetReshardStatus": MethodPolicy("read"),
    # Ingest with create_collection creates a missing collection only for an admin
    # (GatewayServicer.Ingest asks `caller_allowed`).
    "Ingest": MethodPolicy("write"),
    "Delete": MethodPolicy("write"),
    "CreateCollection": MethodPolicy("admin", "name"),
    "Reshard": MethodPolicy("admin"),
    "Reembed": MethodPolicy("admin"),
    "AugmentDatabase": MethodPolicy("admin"),
    "CreateApiKey": MethodPolicy("admin", ""),
    "ListApiKeys": MethodPolicy("admin", ""),
    "RevokeApiKey": MethodPolicy("admin", ""),
}
FALLBACK_POLICY = MethodPolicy("admin", "")


def bearer_key(metadata: Any) -> str:
    """The key of an `authorization: Bearer <key>` entry; UNAUTHENTICATED when absent."""
    for entry in metadata or ():
        name, value = entry[0], entry[1]
        if name.lower() == AUTH_HEADER and isinstance(value, str):
            scheme, _, token = value.strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    raise UnauthenticatedError(
        "this gateway requires an API key: send `authorization: Bearer <key>` "
        "(VISEARCH_API_KEY for the client and CLI)"
    )


def check_call(keys: ApiKeys, method: str, request: Any, metadata: Any) -> ApiKeyRecord:
    """The caller's key record when it may make this call; UNAUTHENTICATED or
    PERMISSION_DENIED otherwise."""
    record = keys.authenticate(bearer_key(metadata))
    policy = METHOD_POLICY.get(method, FALLBACK_POLICY)
    collection = (
        getattr(request, policy.collection_field) if policy.collection_field else ALL_COLLECTIONS
    )
    keys.authorize(record, collection or ALL_COLLECTIONS, policy.role)
    return record


class AuthInterceptor(grpc.ServerInterceptor):
    """Checks the caller's API key against the method's role; leaves non-gateway services
    (health, reflection) open."""

    def __init__(self, keys: ApiKeys) -> None:
        self._keys = keys

    def intercept_service(
        self, continuation: Callable[[Any], Any], handler_call_details: grpc.HandlerCallDetails
    ) -> Any:
        handler = continuation(handler_call_details)
        full_method: str = handler_call_details.method
        if handler is None or not full_method.startswith(SERVICE_PREFIX):
            return handler
        method = full_method[len(SERVICE_PREFIX) :]
        keys = self._keys
        if handler.unary_unary is not None:
            inner = handler.unary_unary

            def unary(request: Any, context: grpc.ServicerContext) -> Any:
                # A VisearchError here reaches the error interceptor outside this one.
                record = check_call(keys, method, request, context.invocation_metadata())
                token = CURRENT_KEY.set(record)
                try:
                    return inner(request, context)
                finally:
                    CURRENT_KEY.reset(token)

            return grpc.unary_unary_rpc_method_handler(
                unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            inner_stream = handler.unary_stream

            def stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                try:
                    check_call(keys, method, request, context.invocation_metadata())
                except VisearchError as exc:  # the error interceptor handles unary calls only
                    context.abort(grpc.StatusCode[exc.status], exc.message)
                yield from inner_stream(request, context)

            return grpc.unary_stream_rpc_method_handler(
                stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return _refuse_all(handler)


def _refuse_all(handler: Any) -> Any:
    """Client-streaming gateway methods do not exist; refuse rather than let one through."""

    def refuse(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "method not covered by authentication")

    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(
            refuse,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return grpc.stream_stream_rpc_method_handler(
        refuse,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
