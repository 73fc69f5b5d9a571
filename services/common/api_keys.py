"""API keys with per-collection roles, stored hashed; free of grpc.

A key is the bearer token ``vsk_<id>_<secret>``: ``id`` (16 hex digits) names the
record, ``secret`` (32 random bytes, URL-safe base64) is known only to its holder.
The store keeps the SHA-256 of the secret (a 256-bit random secret needs no slow
hash), the key's name, its grants, when it was made and when it was revoked.
Redis: ``apikey:<id>`` hash, ``apikeys`` set of ids.

A grant is ``<role>:<collection>``: role ``read`` (Search, Get, GetImage, Stats),
``write`` (read + Ingest, Delete) or ``admin`` (write + collection management and
jobs); collection ``*`` is every collection (and key management needs ``admin:*``).
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, replace
from typing import Protocol

import redis

from services.common.errors import (
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    UnauthenticatedError,
    UnavailableError,
)

KEY_PREFIX = "vsk"
# Where clients (visearch.client, the CLI, the training job's --apply) take their key from.
API_KEY_ENV = "VISEARCH_API_KEY"
ROLES = ("read", "write", "admin")
ALL_COLLECTIONS = "*"
KEY_PATTERN = re.compile(r"^vsk_([0-9a-f]{16})_([A-Za-z0-9_-]{32,128})$")
COLLECTION_PATTERN = re.compile(r"^(\*|[A-Za-z0-9._:-]{1,128})$")
NAME_PATTERN = re.compile(r"^[\x20-\x7e]{1,100}$")
# One message for every refused key, so a caller learns nothing about which part was wrong.
INVALID_KEY = "invalid or revoked API key"


@dataclass(frozen=True)
class Grant:
    role: str
    collection: str

    def __str__(self) -> str:
        return f"{self.role}:{self.collection}"

    @classmethod
    def parse(cls, text: str) -> Grant:
        """``read:COL``, ``write:*``, ``admin:COL`` ...; INVALID_ARGUMENT otherwise."""
        role, sep, collection = text.strip().partition(":")
        if not sep or role not in ROLES or not COLLECTION_PATTERN.match(collection):
            raise InvalidArgumentError(
                f"grant {text!r} must be <role>:<collection> with role one of "
                f"{', '.join(ROLES)} and collection a name or '*'"
            )
        return cls(role, collection)


def role_rank(role: str) -> int:
    return ROLES.index(role)


def grants_allow(grants: tuple[Grant, ...], collection: str, role: str) -> bool:
    """True when a grant gives at least `role` on `collection` (`*` needs a `*` grant)."""
    needed = role_rank(role)
    return any(
        role_rank(g.role) >= needed
        and (g.collection == ALL_COLLECTIONS or g.collection == collection)
        for g in grants
    )


@dataclass(frozen=True)
class ApiKeyRecord:
    id: str
    name: str
    grants: tuple[Grant, ...]
    secret_sha256: str
    created_at: float
    revoked_at: float = 0.0

    @property
    def revoked(self) -> bool:
        return self.revoked_at > 0

    def allows(self, collection: str, role: str) -> bool:
        return not self.revoked and grants_allow(self.grants, collection, role)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def parse_key(key: str) -> tuple[str, str]:
    """(id, secret) of a well-formed key; UNAUTHENTICATED otherwise."""
    match = KEY_PATTERN.match(key.strip())
    if match is None:
        raise UnauthenticatedError(INVALID_KEY)
    return match.group(1), match.group(2)


def generate_key() -> str:
    """A new random key (its id is `parse_key(key)[0]`)."""
    return f"{KEY_PREFIX}_{secrets.token_hex(8)}_{secrets.token_urlsafe(32)}"


def new_record(key: str, name: str, grants: tuple[Grant, ...], now: float) -> ApiKeyRecord:
    """The stored form of `key` (only the SHA-256 of its secret)."""
    if not NAME_PATTERN.match(name):
        raise InvalidArgumentError("a key's name must be 1-100 printable ASCII characters")
    if not grants:
        raise InvalidArgumentError("a key needs at least one grant (e.g. read:COLLECTION)")
    key_id, secret = parse_key(key)
    return ApiKeyRecord(key_id, name, grants, hash_secret(secret), now)


class ApiKeyStore(Protocol):
    def add(self, record: ApiKeyRecord) -> bool:
        """Stores a record unless its id exists; False when it did."""
        ...

    def get(self, key_id: str) -> ApiKeyRecord | None: ...

    def list(self) -> list[ApiKeyRecord]: ...

    def revoke(self, key_id: str, at: float) -> ApiKeyRecord | None:
        """Marks a key revoked (kept for the record); None when there is no such key."""
        ...


class InMemoryApiKeyStore:
    """For unit tests."""

    def __init__(self) -> None:
        self._records: dict[str, ApiKeyRecord] = {}
        self._lock = threading.Lock()

    def add(self, record: ApiKeyRecord) -> bool:
        with self._lock:
            if record.id in self._records:
                return False
            self._records[record.id] = record
            return True

    def get(self, key_id: str) -> ApiKeyRecord | None:
        return self._records.get(key_id)

    def list(self) -> list[ApiKeyRecord]:
        return sorted(self._records.values(), key=lambda r: (r.created_at, r.id))

    def revoke(self, key_id: str, at: float) -> ApiKeyRecord | None:
        with self._lock:
            record = self._records.get(key_id)
            if record is None:
                return None
            if not record.revoked:
                record = replace(record, revoked_at=at)
                self._records[key_id] = record
            return record


def _to_hash(record: ApiKeyRecord) -> dict[str, str]:
    return {
        "name": record.name,
        "grants": json.dumps([str(g) for g in record.grants]),
        "secret_sha256": record.secret_sha256,
        "created_at": repr(record.created_at),
        "revoked_at": repr(record.revoked_at),
    }


def _from_hash(key_id: str, raw: dict[str, str]) -> ApiKeyRecord:
    return ApiKeyRecord(
        id=key_id,
        name=raw.get("name", ""),
        grants=tuple(Grant.parse(g) for g in json.loads(raw.get("grants", "[]"))),
        secret_sha256=raw.get("secret_sha256", ""),
        created_at=float(raw.get("created_at", 0)),
        revoked_at=float(raw.get("revoked_at", 0)),
    )


class RedisApiKeyStore:
    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    @classmethod
    def from_url(cls, url: str) -> RedisApiKeyStore:
        return cls(redis.Redis.from_url(url, decode_responses=True, socket_timeout=10))

    def add(self, record: ApiKeyRecord) -> bool:
        key = f"apikey:{record.id}"
        try:
            with self._redis.pipeline(transaction=True) as pipe:
                pipe.watch(key)
                if pipe.exists(key):
                    pipe.unwatch()
                    return False
                pipe.multi()
                pipe.hset(key, mapping=_to_hash(record))
                pipe.sadd("apikeys", record.id)
                pipe.execute()
        except redis.WatchError:
            return False
        except redis.RedisError as exc:
            raise UnavailableError(f"key store (Redis): {exc}") from exc
        return True

    def get(self, key_id: str) -> ApiKeyRecord | None:
        try:
            raw = self._redis.hgetall(f"apikey:{key_id}")
        except redis.RedisError as exc:
            raise UnavailableError(f"key store (Redis): {exc}") from exc
        return _from_hash(key_id, raw) if raw else None  # type: ignore[arg-type]

    def list(self) -> list[ApiKeyRecord]:
        try:
            ids = sorted(self._redis.smembers("apikeys"))  # type: ignore[arg-type]
        except redis.RedisError as exc:
            raise UnavailableError(f"key store (Redis): {exc}") from exc
        records = [r for r in (self.get(i) for i in ids) if r is not None]
        return sorted(records, key=lambda r: (r.created_at, r.id))

    def revoke(self, key_id: str, at: float) -> ApiKeyRecord | None:
        key = f"apikey:{key_id}"
        try:
            revoked_at = self._redis.hget(key, "revoked_at")
            if revoked_at is None:
                return None
            if float(revoked_at) <= 0:  # type: ignore[arg-type]
                self._redis.hset(key, "revoked_at", repr(at))
        except redis.RedisError as exc:
            raise UnavailableError(f"key store (Redis): {exc}") from exc
        return self.get(key_id)


# The key of the call being served (set by the gateway's auth interceptor; None = auth off).
CURRENT_KEY: contextvars.ContextVar[ApiKeyRecord | None] = contextvars.ContextVar(
    "visearch_api_key", default=None
)


def caller_allowed(collection: str, role: str) -> bool:
    """Whether the caller of the current RPC holds `role` on `collection` (True with auth off)."""
    record = CURRENT_KEY.get()
    return record is None or record.allows(collection, role)


class ApiKeys:
    """Creates, lists, revokes and checks keys against a store."""

    def __init__(self, store: ApiKeyStore) -> None:
        self.store = store

    def create(
        self, name: str, grants: list[str], now: float | None = None
    ) -> tuple[str, ApiKeyRecord]:
        """A new key and its record; the key itself is never stored."""
        parsed = tuple(dict.fromkeys(Grant.parse(g) for g in grants))
        key = generate_key()
        record = new_record(key, name, parsed, time.time() if now is None else now)
        if not self.store.add(record):  # 64 random bits collided: vanishingly rare
            raise UnavailableError("key id collision; retry")
        return key, record

    def ensure(self, key: str, name: str, grants: list[str]) -> bool:
        """Registers a given key (a bootstrap key from a secret) unless its id is known:
        a revoked bootstrap key stays revoked. True when it was added."""
        parsed = tuple(Grant.parse(g) for g in grants)
        try:
            record = new_record(key, name, parsed, time.time())
        except UnauthenticatedError as exc:
            raise InvalidArgumentError(
                f"malformed key for {name!r}: expected vsk_<id>_<secret>"
            ) from exc
        return self.store.add(record)

    def revoke(self, key_id: str) -> ApiKeyRecord:
        record = self.store.revoke(key_id, time.time())
        if record is None:
            raise NotFoundError(f"no API key {key_id!r}")
        return record

    def authenticate(self, key: str) -> ApiKeyRecord:
        """The record of a valid, unrevoked key; UNAUTHENTICATED otherwise."""
        key_id, secret = parse_key(key)
        record = self.store.get(key_id)
        if (
            record is None
            or record.revoked
            or not hmac.compare_digest(record.secret_sha256, hash_secret(secret))
        ):
            raise UnauthenticatedError(INVALID_KEY)
        return record

    @staticmethod
    def authorize(record: ApiKeyRecord, collection: str, role: str) -> None:
        if not record.allows(collection, role):
            where = (
                "every collection"
                if collection == ALL_COLLECTIONS
                else f"collection {collection!r}"
            )
            raise PermissionDeniedError(
                f"API key {record.id} ({record.name}) lacks the {role} role on {where}"
            )
