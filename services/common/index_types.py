"""Domain types shared by the indexer and its callers: item metadata, filters, index settings."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ItemMeta:
    """What filters match on, kept beside each vector."""

    label: str = ""
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SearchFilter:
    label: str = ""
    attributes: dict[str, str] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not self.label and not self.attributes


NO_FILTER = SearchFilter()


@dataclass(frozen=True)
class IndexOverrides:
    """A collection's settings; 0 = chosen from the shard's size."""

    exact_threshold: int = 0
    num_leaves: int = 0
    leaves_to_search: int = 0
    reorder: int = 0


NO_OVERRIDES = IndexOverrides()
