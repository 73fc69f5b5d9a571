"""Image sets on disk: folders, CSV manifests (id,path,label) and the UKBench layout."""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
DEFAULT_LABEL_REGEX = r"^(.+?)[-_][^-_]*$"


@dataclass(frozen=True)
class ImageEntry:
    id: str
    path: Path
    label: str


def _id_from_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._:-]", "_", name)[:128]


def from_directory(
    directory: Path, label_regex: str | None = DEFAULT_LABEL_REGEX
) -> list[ImageEntry]:
    """Images directly in `directory`, id = file stem, label = the regex's first group."""
    pattern = re.compile(label_regex) if label_regex else None
    entries = []
    for path in sorted(directory.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        label = ""
        if pattern is not None:
            match = pattern.search(path.stem)
            if match:
                label = match.group(1) if match.groups() else match.group(0)
        entries.append(ImageEntry(_id_from_name(path.stem), path, label))
    return entries


def from_manifest(manifest: Path) -> list[ImageEntry]:
    """CSV with columns id,path,label; relative paths are relative to the CSV's folder."""
    with manifest.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {"id", "path"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{manifest}: missing column(s) {', '.join(sorted(missing))}")
        entries = []
        for row in reader:
            path = Path(row["path"])
            if not path.is_absolute():
                path = manifest.parent / path
            entries.append(ImageEntry(row["id"], path, row.get("label") or ""))
    return entries


def labelled(dataset_dir: Path, per_label: int = 0) -> list[ImageEntry]:
    """images/<path> with groundtruth.csv (filename,label or filename,group), e.g. flowers5.

    id = the file's path below images/ without suffix ("/" -> "_"); per_label > 0 keeps the
    first that many images of each label (in file order), for a balanced subset.
    """
    ground_truth = dataset_dir / "groundtruth.csv"
    if not ground_truth.exists():
        raise FileNotFoundError(f"{ground_truth} not found: expected filename,label rows")
    with ground_truth.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    taken: dict[str, int] = {}
    entries = []
    for row in rows:
        label = row.get("label") or row.get("group") or ""
        if per_label and taken.get(label, 0) >= per_label:
            continue
        taken[label] = taken.get(label, 0) + 1
        name = str(Path(row["filename"]).with_suffix(""))
        entries.append(
            ImageEntry(_id_from_name(name), dataset_dir / "images" / row["filename"], label)
        )
    return entries


def ukbench(dataset_dir: Path, limit: int = 0) -> list[ImageEntry]:
    """UKBench: images/<name>.jpg and groundtruth.csv (filename,group)."""
    ground_truth = dataset_dir / "groundtruth.csv"
    if not ground_truth.exists():
        raise FileNotFoundError(f"{ground_truth} not found: not a UKBench-layout folder")
    with ground_truth.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    entries = [
        ImageEntry(
            Path(row["filename"]).stem, dataset_dir / "images" / row["filename"], row["group"]
        )
        for row in rows
    ]
    return entries[:limit] if limit else entries
