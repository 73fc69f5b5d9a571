"""Edge validation of everything a client sends to the gateway."""

from __future__ import annotations

import re

from services.common.errors import InvalidArgumentError
from services.common.index_types import IndexOverrides, SearchFilter
from services.gateway.ports import IngestItem

ID_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
MAX_ITEMS_PER_INGEST = 256
MAX_IDS_PER_DELETE = 1000
MAX_LABEL_CHARS = 256
MAX_ATTRIBUTES = 32
MAX_ATTRIBUTE_CHARS = 1024
MAX_K = 1000
DEFAULT_K = 10
RERANK_MODES = ("none", "geometric", "texture")
MAX_OBJECT_KEY_CHARS = 1024
# "<bucket>/<key>": S3 bucket names, then path segments of printable characters.
OBJECT_KEY_PATTERN = re.compile(r"^[a-z0-9][a-z0-9.-]{1,62}/[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?$")


def check_object_key(key: str, what: str) -> None:
    """An object-store key a client names: "<bucket>/<key>", printable, no "." or ".."
    segment (a path that leaves its folder) and no empty segment."""
    segments = key.split("/")
    if (
        len(key) > MAX_OBJECT_KEY_CHARS
        or not OBJECT_KEY_PATTERN.match(key)
        or any(segment in ("", ".", "..") for segment in segments)
        or "\\" in key
    ):
        raise InvalidArgumentError(
            f"{what}: object key {key!r} is invalid: use '<bucket>/<key>' of printable "
            f"characters, at most {MAX_OBJECT_KEY_CHARS}, with no empty, '.' or '..' segment"
        )


def check_id(image_id: str) -> None:
    if not ID_PATTERN.match(image_id):
        raise InvalidArgumentError(
            f"id {image_id!r} is invalid: use 1-128 characters of letters, digits, "
            "'.', '_', ':', '-'"
        )


def check_ids(ids: list[str], maximum: int) -> None:
    if not ids:
        raise InvalidArgumentError("no ids given")
    if len(ids) > maximum:
        raise InvalidArgumentError(f"{len(ids)} ids in one request; at most {maximum}")
    seen: set[str] = set()
    for image_id in ids:
        check_id(image_id)
        if image_id in seen:
            raise InvalidArgumentError(f"id {image_id!r} appears twice in one request")
        seen.add(image_id)


def check_ingest_items(items: list[IngestItem]) -> None:
    check_ids([item.id for item in items], MAX_ITEMS_PER_INGEST)
    for item in items:
        if bool(item.image) == bool(item.object_key):
            raise InvalidArgumentError(
                f"item {item.id!r}: give exactly one of image bytes or an object key"
            )
        if len(item.label) > MAX_LABEL_CHARS:
            raise InvalidArgumentError(
                f"item {item.id!r}: label is longer than {MAX_LABEL_CHARS} characters"
            )
        if len(item.attributes) > MAX_ATTRIBUTES:
            raise InvalidArgumentError(
                f"item {item.id!r}: {len(item.attributes)} attributes; at most {MAX_ATTRIBUTES}"
            )
        for key, value in item.attributes.items():
            if not key or len(key) + len(value) > MAX_ATTRIBUTE_CHARS:
                raise InvalidArgumentError(
                    f"item {item.id!r}: attribute {key[:40]!r} is empty or longer than "
                    f"{MAX_ATTRIBUTE_CHARS} characters"
                )


def resolve_k(k: int) -> int:
    if k == 0:
        return DEFAULT_K
    if not 1 <= k <= MAX_K:
        raise InvalidArgumentError(f"k must be in 1..{MAX_K}, got {k}")
    return k


def check_rerank_mode(mode: str) -> None:
    if mode not in RERANK_MODES:
        raise InvalidArgumentError(
            f"rerank mode {mode!r} is not supported; use one of {', '.join(RERANK_MODES)}"
        )


def check_filter(search_filter: SearchFilter) -> None:
    if len(search_filter.label) > MAX_LABEL_CHARS:
        raise InvalidArgumentError(f"filter label is longer than {MAX_LABEL_CHARS} characters")
    if len(search_filter.attributes) > MAX_ATTRIBUTES:
        raise InvalidArgumentError(
            f"filter has {len(search_filter.attributes)} attributes; at most {MAX_ATTRIBUTES}"
        )
    if any(not key for key in search_filter.attributes):
        raise InvalidArgumentError("filter attribute names must not be empty")


MAX_INDEX_SETTING = 10_000_000


def check_index_overrides(index: IndexOverrides) -> None:
    for name, value in vars(index).items():
        if not 0 <= value <= MAX_INDEX_SETTING:
            raise InvalidArgumentError(
                f"index setting {name} must be in 0..{MAX_INDEX_SETTING} (0 = automatic), "
                f"got {value}"
            )
    if index.num_leaves and index.leaves_to_search > index.num_leaves:
        raise InvalidArgumentError(
            f"leaves_to_search ({index.leaves_to_search}) cannot exceed num_leaves "
            f"({index.num_leaves})"
        )
