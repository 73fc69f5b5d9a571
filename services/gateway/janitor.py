"""Background housekeeping of the gateway: erasure of unreferenced images and a sweep of
orphaned index entries. One gateway at a time does it (a lease).

- Erasure: an image's bytes and features (content-addressed, shared by every id with the
  same bytes) are deleted `erase_after_s` after the last id referencing them was deleted or
  re-ingested with other bytes, and also when the ingest that stored them failed
  (services/common/blob_ledger.py).
- Orphan sweep: a vector on a shard whose id has no metadata is an orphan (metadata is the
  commit point of an ingest; a failed ingest undoes its vectors, but a shard that was down
  then keeps them). An id seen orphaned in a sweep and still orphaned in a sweep at least
  `orphan_grace_s` later is deleted from that shard, so an ingest in flight (vectors
  written, metadata not yet) is never touched.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from services.common.blob_ledger import BlobLedger
from services.common.errors import FailedPreconditionError, VisearchError
from services.common.lease import Lease, held
from services.common.metadata import MetadataStore
from services.common.objectstore import ObjectStore
from services.gateway.reshard import ReshardShardPort

log = logging.getLogger(__name__)
LEASE_NAME = "janitor"
FETCH_PAGE = 2000


@dataclass(frozen=True)
class JanitorSettings:
    erase_after_s: float = 60.0
    erase_interval_s: float = 10.0
    orphan_grace_s: float = 600.0
    orphan_interval_s: float = 300.0
    lease_s: float = 30.0
    shard_timeout_s: float = 30.0
    erase_batch: int = 500


@dataclass(frozen=True)
class SweepReport:
    orphans_seen: int
    orphans_deleted: int


class Janitor:
    def __init__(
        self,
        shards: Sequence[ReshardShardPort],
        metadata: MetadataStore,
        ledger: BlobLedger,
        store: ObjectStore,
        lease: Lease,
        settings: JanitorSettings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._shards = shards
        self._metadata = metadata
        self._ledger = ledger
        self._store = store
        self._lease = lease
        self._settings = settings
        self._clock = clock
        # (index name, shard, id) -> when a sweep first found it without metadata.
        self._orphans_since: dict[tuple[str, int, str], float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def erase_due(self) -> int:
        """Erases every queued image whose last reference went `erase_after_s` ago or
        more; returns how many images were erased."""
        erased = 0
        before = self._clock() - self._settings.erase_after_s
        for sha256 in self._ledger.due(before, self._settings.erase_batch):
            keys = self._ledger.begin_erase(sha256, self._settings.shard_timeout_s)
            if keys is None:
                continue
            for key in keys:
                self._store.delete(key)
            self._ledger.end_erase(sha256)
            erased += 1
        if erased:
            log.info("erased unreferenced images", extra={"fields": {"images": erased}})
        return erased

    def sweep_orphans(self) -> SweepReport:
        """One pass over every index of every collection on every shard."""
        now = self._clock()
        still: dict[tuple[str, int, str], float] = {}
        deleted = 0
        for name in self._metadata.list_collections():
            config = self._metadata.get_collection(name)
            if config is None:
                continue
            for index_name in dict.fromkeys(v.index_name for v in config.generation_views()):
                for shard in self._shards:
                    orphans = self._orphans_on(name, index_name, shard)
                    due = []
                    for image_id in orphans:
                        key = (index_name, shard.shard, image_id)
                        since = self._orphans_since.get(key, now)
                        still[key] = since
                        if now - since >= self._settings.orphan_grace_s:
                            due.append(image_id)
                    deleted += self._delete_orphans(name, index_name, shard, due, still)
        self._orphans_since = still
        return SweepReport(len(still) + deleted, deleted)

    def _orphans_on(self, collection: str, index_name: str, shard: ReshardShardPort) -> list[str]:
        orphans: list[str] = []
        token = ""
        while True:
            page = shard.fetch(
                index_name, token, FETCH_PAGE, 0, True, self._settings.shard_timeout_s
            )
            if page.ids:
                known = self._metadata.get_images(collection, page.ids)
                orphans += [i for i, m in zip(page.ids, known, strict=True) if m is None]
            token = page.next_page_token
            if not token:
                return orphans

    def _delete_orphans(
        self,
        collection: str,
        index_name: str,
        shard: ReshardShardPort,
        due: list[str],
        still: dict[tuple[str, int, str], float],
    ) -> int:
        if not due:
            return 0
        # Checked again right before the delete: an ingest may have committed meanwhile.
        known = self._metadata.get_images(collection, due)
        orphans = [i for i, m in zip(due, known, strict=True) if m is None]
        if orphans:
            shard.delete(index_name, orphans, self._settings.shard_timeout_s)
            log.warning(
                "deleted orphaned index entries",
                extra={"fields": {"index": index_name, "shard": shard.shard, "ids": orphans}},
            )
        for image_id in due:
            still.pop((index_name, shard.shard, image_id), None)
        return len(orphans)

    def run_once(self, sweep: bool) -> None:
        """Erases what is due (and sweeps orphans when `sweep`) if no other gateway holds
        the lease."""
        try:
            with held(self._lease, LEASE_NAME, self._settings.lease_s, "housekeeping"):
                self.erase_due()
                if sweep:
                    report = self.sweep_orphans()
                    if report.orphans_seen:
                        log.info(
                            "orphan sweep",
                            extra={"fields": {"seen": report.orphans_seen}},
                        )
        except FailedPreconditionError:
            pass  # another gateway does it

    def start(self) -> None:
        """Runs housekeeping in a daemon thread until `stop`."""

        def loop() -> None:
            last_sweep = float("-inf")
            while not self._stop.wait(self._settings.erase_interval_s):
                sweep = time.monotonic() - last_sweep >= self._settings.orphan_interval_s
                try:
                    self.run_once(sweep)
                    if sweep:
                        last_sweep = time.monotonic()
                except VisearchError as exc:
                    log.warning("housekeeping failed", extra={"fields": {"error": exc.message}})
                except Exception:
                    log.exception("housekeeping failed")

        self._thread = threading.Thread(target=loop, name="janitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
