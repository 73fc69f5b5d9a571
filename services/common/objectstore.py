"""Object storage behind a small interface: S3 (MinIO SDK) and in-memory."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from typing import Protocol

from minio import Minio
from minio.error import S3Error

from services.common.config import ObjectStoreConfig
from services.common.errors import NotFoundError, UnavailableError


class ObjectStore(Protocol):
    """Keys are written "bucket/path/inside/bucket"."""

    def put(self, key: str, data: bytes, content_type: str = ...) -> None: ...

    def get(self, key: str) -> bytes:
        """Raises NotFoundError when the object does not exist."""
        ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None: ...

    def list(self, prefix: str) -> Iterator[str]:
        """Keys (with bucket) under "bucket/prefix"."""
        ...


def split_key(key: str) -> tuple[str, str]:
    """'bucket/a/b' -> ('bucket', 'a/b'); raises NotFoundError on a malformed key."""
    bucket, sep, name = key.partition("/")
    if not bucket or not sep or not name:
        raise NotFoundError(f"object key {key!r} is not of the form 'bucket/name'")
    return bucket, name


class InMemoryObjectStore:
    """For unit tests."""

    def __init__(self) -> None:
        self._objects: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        split_key(key)
        with self._lock:
            self._objects[key] = bytes(data)

    def get(self, key: str) -> bytes:
        with self._lock:
            if key not in self._objects:
                raise NotFoundError(f"object {key!r} does not exist")
            return self._objects[key]

    def exists(self, key: str) -> bool:
        with self._lock:
            return key in self._objects

    def delete(self, key: str) -> None:
        with self._lock:
            self._objects.pop(key, None)

    def list(self, prefix: str) -> Iterator[str]:
        with self._lock:
            keys = sorted(k for k in self._objects if k.startswith(prefix))
        yield from keys


class S3ObjectStore:
    """S3 API through the MinIO SDK (SeaweedFS locally, MinIO on Kubernetes)."""

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        *,
        secure: bool = False,
        region: str = "us-east-1",
    ) -> None:
        self._client = Minio(
            endpoint, access_key=access_key, secret_key=secret_key, secure=secure, region=region
        )
        self._known_buckets: set[str] = set()
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, config: ObjectStoreConfig) -> S3ObjectStore:
        return cls(config.endpoint, config.access_key, config.secret_key, secure=config.secure)

    def ensure_buckets(self, buckets: list[str]) -> None:
        for bucket in buckets:
            try:
                if not self._client.bucket_exists(bucket):
                    self._client.make_bucket(bucket)
            except S3Error as exc:
                if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise UnavailableError(
                        f"object store: cannot create bucket {bucket}: {exc}"
                    ) from exc
            except Exception as exc:  # urllib3 connection errors
                raise UnavailableError(f"object store unreachable: {exc}") from exc
            with self._lock:
                self._known_buckets.add(bucket)

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        bucket, name = split_key(key)
        try:
            self._client.put_object(
                bucket, name, io.BytesIO(data), len(data), content_type=content_type
            )
        except S3Error as exc:
            raise UnavailableError(f"object store: cannot write {key}: {exc.code}") from exc
        except Exception as exc:
            raise UnavailableError(f"object store unreachable writing {key}: {exc}") from exc

    def get(self, key: str) -> bytes:
        bucket, name = split_key(key)
        try:
            response = self._client.get_object(bucket, name)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchBucket", "NoSuchObject"):
                raise NotFoundError(f"object {key!r} does not exist") from exc
            raise UnavailableError(f"object store: cannot read {key}: {exc.code}") from exc
        except Exception as exc:
            raise UnavailableError(f"object store unreachable reading {key}: {exc}") from exc
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    def exists(self, key: str) -> bool:
        bucket, name = split_key(key)
        try:
            self._client.stat_object(bucket, name)
            return True
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchBucket", "NoSuchObject", "NotFound"):
                return False
            raise UnavailableError(f"object store: cannot stat {key}: {exc.code}") from exc
        except Exception as exc:
            raise UnavailableError(f"object store unreachable: {exc}") from exc

    def delete(self, key: str) -> None:
        bucket, name = split_key(key)
        try:
            self._client.remove_object(bucket, name)
        except S3Error as exc:
            raise UnavailableError(f"object store: cannot delete {key}: {exc.code}") from exc

    def list(self, prefix: str) -> Iterator[str]:
        bucket, _, name_prefix = prefix.partition("/")
        for obj in self._client.list_objects(bucket, prefix=name_prefix, recursive=True):
            yield f"{bucket}/{obj.object_name}"
