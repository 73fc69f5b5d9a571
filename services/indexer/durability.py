"""A shard's write-ahead log (Redis streams) and snapshots (object store + one Redis pointer).

WAL: stream `wal:<collection>:<shard>`, one entry per Upsert/Delete, written
before the shard applies it; the stream id is the sequence number. The shard
registers each collection it logs in the set `walcols:<shard>`.
Snapshot: `snapshots/<collection>/<shard>/<seq>/vectors.npz` (ids + float32
vectors as of `seq`) and, when the shard serves a ScaNN searcher, its serialized
files under `.../<seq>/scann/` with `.../<seq>/scann.json` (file names, docids,
build state); published by setting `snap:<collection>:<shard>`; only then is the
log trimmed behind `seq`.
"""

from __future__ import annotations

import io
import json
import logging
import struct
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from typing import Protocol

import numpy as np
import redis

from services.common.errors import UnavailableError
from services.common.index_types import NO_OVERRIDES, IndexOverrides, ItemMeta
from services.common.objectstore import ObjectStore
from services.indexer.searcher_files import SerializedSearcher

OP_UPSERT = "upsert"
OP_DELETE = "delete"
# A delete during a reshard: also leaves tombstones (services.indexer.core.Shard.delete).
OP_DELETE_TOMBSTONE = "delete-tombstone"
OP_CLEAR_TOMBSTONES = "clear-tombstones"
REPLAY_BATCH = 500
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WalEntry:
    seq: str
    op: str
    ids: list[str]
    vectors: np.ndarray | None  # float32 [n, d] for upserts
    metadata: list[ItemMeta] | None = None
    overrides: IndexOverrides | None = None


@dataclass(frozen=True)
class Snapshot:
    seq: str
    ids: list[str]
    vectors: np.ndarray  # float32 [n, d]
    metadata: list[ItemMeta]
    overrides: IndexOverrides = NO_OVERRIDES
    tombstones: tuple[str, ...] = ()
    searcher: SerializedSearcher | None = None


def _metadata_json(metadata: list[ItemMeta] | None) -> str:
    if metadata is None:
        return ""
    return json.dumps([[m.label, m.attributes] for m in metadata])


def _overrides_json(overrides: IndexOverrides | None) -> str:
    return "" if overrides is None else json.dumps(asdict(overrides))


def _overrides_from_json(text: str | bytes) -> IndexOverrides | None:
    return IndexOverrides(**json.loads(text)) if text else None


def _metadata_from_json(text: str | bytes) -> list[ItemMeta] | None:
    if not text:
        return None
    # Entries without attributes share one ItemMeta per label (a snapshot holds millions).
    by_label: dict[str, ItemMeta] = {}
    out = []
    for label, attributes in json.loads(text):
        if attributes:
            out.append(ItemMeta(label, dict(attributes)))
            continue
        meta = by_label.get(label)
        if meta is None:
            meta = by_label[label] = ItemMeta(label, {})
        out.append(meta)
    return out


def seq_key(seq: str) -> tuple[int, int]:
    """Orders Redis stream ids ("<ms>-<n>")."""
    millis, _, counter = seq.partition("-")
    return int(millis), int(counter or 0)


class WriteAheadLog(Protocol):
    def append(
        self,
        collection: str,
        op: str,
        ids: list[str],
        vectors: np.ndarray | None,
        metadata: list[ItemMeta] | None,
        overrides: IndexOverrides | None = None,
    ) -> str:
        """Durably appends one operation; returns its sequence number."""
        ...

    def read_after(self, collection: str, after: str) -> Iterator[WalEntry]:
        """Entries with seq > after ("0-0" = from the start), in order."""
        ...

    def trim_before(self, collection: str, seq: str) -> None: ...

    def collections(self) -> list[str]: ...

    def length(self, collection: str) -> int: ...

    def drop(self, collection: str) -> None:
        """Deletes the collection's log and unregisters it (recovery skips it), atomically."""
        ...


class SnapshotStore(Protocol):
    def save(self, collection: str, snapshot: Snapshot) -> None:
        """Writes the snapshot under a new key, then publishes it by one pointer update."""
        ...

    def latest(self, collection: str) -> Snapshot | None:
        """The published snapshot; its vectors array is the caller's own (a recovering
        index adopts it as its matrix and writes into it later)."""
        ...

    def drop(self, collection: str) -> None:
        """Unpublishes the collection's snapshot pointer, then deletes its snapshot files."""
        ...


def _encode_vectors(vectors: np.ndarray | None) -> bytes:
    if vectors is None:
        return b""
    return np.ascontiguousarray(vectors, dtype="<f4").tobytes()


class RedisWriteAheadLog:
    def __init__(self, client: redis.Redis, shard: int) -> None:
        self._redis = client
        self._shard = shard

    def _key(self, collection: str) -> str:
        return f"wal:{collection}:{self._shard}"

    def append(
        self,
        collection: str,
        op: str,
        ids: list[str],
        vectors: np.ndarray | None,
        metadata: list[ItemMeta] | None,
        overrides: IndexOverrides | None = None,
    ) -> str:
        dims = 0 if vectors is None else int(vectors.shape[1])
        try:
            with self._redis.pipeline(transaction=True) as pipe:
                pipe.sadd(f"walcols:{self._shard}", collection)
                pipe.xadd(
                    self._key(collection),
                    {
                        "op": op,
                        "ids": json.dumps(ids),
                        "dims": dims,
                        "vectors": _encode_vectors(vectors),
                        "meta": _metadata_json(metadata),
                        "params": _overrides_json(overrides),
                    },
                )
                _, seq = pipe.execute()
        except redis.RedisError as exc:
            raise UnavailableError(f"write-ahead log (Redis) unavailable: {exc}") from exc
        return seq.decode() if isinstance(seq, bytes) else str(seq)

    def read_after(self, collection: str, after: str) -> Iterator[WalEntry]:
        start = f"({after}"
        while True:
            try:
                rows = self._redis.xrange(self._key(collection), min=start, count=REPLAY_BATCH)
            except redis.RedisError as exc:
                raise UnavailableError(f"write-ahead log (Redis) unavailable: {exc}") from exc
            if not rows:
                return
            for raw_seq, fields in rows:
                seq = raw_seq.decode()
                dims = int(fields[b"dims"])
                ids = json.loads(fields[b"ids"])
                vectors = (
                    np.frombuffer(fields[b"vectors"], dtype="<f4").reshape(len(ids), dims)
                    if dims
                    else None
                )
                metadata = _metadata_from_json(fields.get(b"meta", b""))
                overrides = _overrides_from_json(fields.get(b"params", b""))
                yield WalEntry(seq, fields[b"op"].decode(), ids, vectors, metadata, overrides)
                start = f"({seq}"

    def trim_before(self, collection: str, seq: str) -> None:
        self._redis.xtrim(self._key(collection), minid=seq, approximate=False)

    def collections(self) -> list[str]:
        return sorted(m.decode() for m in self._redis.smembers(f"walcols:{self._shard}"))

    def length(self, collection: str) -> int:
        return int(self._redis.xlen(self._key(collection)))

    def drop(self, collection: str) -> None:
        try:
            with self._redis.pipeline(transaction=True) as pipe:
                pipe.srem(f"walcols:{self._shard}", collection)
                pipe.delete(self._key(collection))
                pipe.execute()
        except redis.RedisError as exc:
            raise UnavailableError(f"write-ahead log (Redis) unavailable: {exc}") from exc


class ObjectSnapshotStore:
    """Snapshots as ``<bucket>/<collection>/<shard>/<seq>/`` folders, published by a Redis
    pointer. After each save the folders older than the previous snapshot are deleted: the
    previous one stays, so a reader that fetched the pointer just before the switch can still
    load it."""

    def __init__(self, store: ObjectStore, bucket: str, client: redis.Redis, shard: int) -> None:
        self._store = store
        self._bucket = bucket
        self._redis = client
        self._shard = shard

    def save(self, collection: str, snapshot: Snapshot) -> None:
        buffer = io.BytesIO()
        np.savez(
            buffer,
            ids=np.asarray(snapshot.ids, dtype=str),
            vectors=snapshot.vectors,
            metadata=np.asarray([_metadata_json(snapshot.metadata)], dtype=str),
            params=np.asarray([_overrides_json(snapshot.overrides)], dtype=str),
            tombstones=np.asarray(sorted(snapshot.tombstones), dtype=str),
        )
        prefix = f"{self._bucket}/{collection}/{self._shard}/{snapshot.seq}"
        key = f"{prefix}/vectors.npz"
        self._store.put(key, buffer.getvalue())
        pointer = {"seq": snapshot.seq, "key": key}
        if snapshot.searcher is not None:
            pointer["scann"] = self._save_searcher(prefix, snapshot.searcher)
        previous = self._redis.set(
            f"snap:{collection}:{self._shard}", json.dumps(pointer), get=True
        )
        keep = {snapshot.seq}
        if previous is not None:
            keep.add(str(json.loads(previous)["seq"]))
        self._delete_folders_except(collection, keep)

    def _delete_folders_except(self, collection: str, keep: set[str]) -> None:
        """Deletes this shard's snapshot folders of ``collection`` whose seq is not in ``keep``.
        Failures are logged: the new snapshot is already published, and a later save retries."""
        folder = f"{self._bucket}/{collection}/{self._shard}/"
        try:
            stale = [
                k for k in self._store.list(folder) if k[len(folder) :].split("/")[0] not in keep
            ]
            for key in stale:
                self._store.delete(key)
        except Exception:  # listing errors come unwrapped from the S3 client
            log.warning("could not delete old snapshots of %s", collection, exc_info=True)

    def _save_searcher(self, prefix: str, searcher: SerializedSearcher) -> str:
        """Uploads the searcher's files and their manifest; returns the manifest's key."""
        for name, data in searcher.files.items():
            self._store.put(f"{prefix}/scann/{name}", data)
        manifest = {
            "files": sorted(searcher.files),
            "docids": searcher.docids,
            "built_size": searcher.built_size,
            "changes_since_build": searcher.changes_since_build,
            "fresh_ids": searcher.fresh_ids,
            "sha256": searcher.sha256,
            "params": searcher.params,
        }
        key = f"{prefix}/scann.json"
        self._store.put(key, json.dumps(manifest).encode())
        return key

    def _load_searcher(self, manifest_key: str) -> SerializedSearcher | None:
        """The snapshot's serialized searcher; None (logged) when it cannot be read."""
        try:
            manifest = json.loads(self._store.get(manifest_key))
            prefix = manifest_key.rsplit("/", 1)[0]
            files = {name: self._store.get(f"{prefix}/scann/{name}") for name in manifest["files"]}
            return SerializedSearcher(
                files=files,
                docids=[str(i) for i in manifest["docids"]],
                built_size=int(manifest["built_size"]),
                changes_since_build=int(manifest["changes_since_build"]),
                fresh_ids=[str(i) for i in manifest["fresh_ids"]],
                sha256={str(k): str(v) for k, v in manifest["sha256"].items()},
                params=dict(manifest["params"]),
            )
        except Exception:
            log.warning("could not read the snapshot's ScaNN searcher", exc_info=True)
            return None

    def latest(self, collection: str) -> Snapshot | None:
        pointer = self._redis.get(f"snap:{collection}:{self._shard}")
        if pointer is None:
            return None
        meta = json.loads(pointer)
        raw = self._store.get(meta["key"])
        with np.load(io.BytesIO(raw), allow_pickle=False) as data:
            ids = data["ids"].tolist()
            metadata = _metadata_from_json(str(data["metadata"][0])) or [ItemMeta()] * len(ids)
            overrides = _overrides_from_json(str(data["params"][0])) if "params" in data else None
            tombstones = tuple(str(i) for i in data["tombstones"]) if "tombstones" in data else ()
            # A read-only view of the downloaded bytes rather than a second copy of the
            # vectors (the recovering index adopts it and copies it on its first write).
            vectors = _stored_npz_member(raw, "vectors.npy")
            if vectors is None:
                vectors = data["vectors"]
        del raw
        searcher = self._load_searcher(meta["scann"]) if "scann" in meta else None
        return Snapshot(
            meta["seq"], ids, vectors, metadata, overrides or NO_OVERRIDES, tombstones, searcher
        )

    def drop(self, collection: str) -> None:
        self._redis.delete(f"snap:{collection}:{self._shard}")
        for key in list(self._store.list(f"{self._bucket}/{collection}/{self._shard}/")):
            self._store.delete(key)


def _stored_npz_member(raw: bytes, name: str) -> np.ndarray | None:
    """A read-only view of an uncompressed .npz member's array inside `raw` (no copy);
    None when it is compressed, absent, Fortran-ordered or of an object dtype."""
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as archive:
            info = archive.getinfo(name)
        if info.compress_type != zipfile.ZIP_STORED:
            return None
        local = info.header_offset
        if raw[local : local + 4] != b"PK\x03\x04":
            return None
        name_len, extra_len = struct.unpack("<HH", raw[local + 26 : local + 30])
        start = local + 30 + name_len + extra_len
        stream = io.BytesIO(raw[start : start + 1024])  # the .npy header fits in 1 KiB
        version = np.lib.format.read_magic(stream)
        read_header = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, fortran_order, dtype = read_header(stream)
        count = int(np.prod(shape, dtype=np.int64))
        if (
            fortran_order
            or dtype.hasobject
            or stream.tell() + count * dtype.itemsize > info.file_size
        ):
            return None
        array = np.frombuffer(raw, dtype=dtype, count=count, offset=start + stream.tell())
        return array.reshape(shape)
    except (KeyError, ValueError, zipfile.BadZipFile, struct.error):
        return None


class InMemoryWriteAheadLog:
    """For unit tests of the shard core."""

    def __init__(self) -> None:
        self._entries: dict[str, list[WalEntry]] = {}
        self._counter = 0
        self._lock = threading.Lock()

    def append(
        self,
        collection: str,
        op: str,
        ids: list[str],
        vectors: np.ndarray | None,
        metadata: list[ItemMeta] | None,
        overrides: IndexOverrides | None = None,
    ) -> str:
        with self._lock:
            self._counter += 1
            seq = f"{self._counter}-0"
            copy = None if vectors is None else np.array(vectors, dtype=np.float32)
            entry = WalEntry(seq, op, list(ids), copy, metadata, overrides)
            self._entries.setdefault(collection, []).append(entry)
            return seq

    def read_after(self, collection: str, after: str) -> Iterator[WalEntry]:
        with self._lock:
            entries = list(self._entries.get(collection, []))
        yield from (e for e in entries if seq_key(e.seq) > seq_key(after))

    def trim_before(self, collection: str, seq: str) -> None:
        with self._lock:
            self._entries[collection] = [
                e for e in self._entries.get(collection, []) if seq_key(e.seq) >= seq_key(seq)
            ]

    def collections(self) -> list[str]:
        with self._lock:
            return sorted(self._entries)

    def length(self, collection: str) -> int:
        with self._lock:
            return len(self._entries.get(collection, []))

    def drop(self, collection: str) -> None:
        with self._lock:
            self._entries.pop(collection, None)


class InMemorySnapshotStore:
    def __init__(self) -> None:
        self._latest: dict[str, Snapshot] = {}

    def save(self, collection: str, snapshot: Snapshot) -> None:
        self._latest[collection] = snapshot

    def latest(self, collection: str) -> Snapshot | None:
        snapshot = self._latest.get(collection)
        if snapshot is None:
            return None
        return replace(snapshot, vectors=np.array(snapshot.vectors, dtype=np.float32))

    def drop(self, collection: str) -> None:
        self._latest.pop(collection, None)
