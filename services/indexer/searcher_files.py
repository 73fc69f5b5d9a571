"""A trained ScaNN searcher as files (for a shard snapshot) and back.

ScaNN's `serialize` also pickles the docids; they travel as a plain list here
instead, so that loading a snapshot never unpickles bytes read from storage.
ScaNN's loader crashes the process on a damaged file (a truncated `.npy` is a
segfault), so every file is checked against its SHA-256 and every `.npy` against
its header before ScaNN reads it.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from dataclasses import dataclass

import numpy as np
import scann

DOCIDS_PICKLE = "scann_docids.pkl"


@dataclass(frozen=True)
class SerializedSearcher:
    """A serving searcher as of a snapshot.

    files: `serialize` output (file name -> contents) without the docid pickle;
    docids: the searcher's docids, exactly the snapshot's ids; built_size: vectors it
    was trained on; changes_since_build: writes since; fresh_ids: ids written since its
    data was copied for training (scored exactly on every query until the next build).
    """

    files: dict[str, bytes]
    docids: list[str]
    built_size: int
    changes_since_build: int
    fresh_ids: list[str]
    sha256: dict[str, str]  # file name -> hex digest, taken when serialized
    params: dict[str, int | float]  # the ScannParams it was built with (search widths)


def digests(files: dict[str, bytes]) -> dict[str, str]:
    return {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}


def searcher_files(searcher: scann.scann_ops_pybind.ScannSearcher) -> dict[str, bytes]:
    """The searcher's serialized assets, name -> contents (paths inside are relative)."""
    with tempfile.TemporaryDirectory(prefix="scann-save-") as directory:
        searcher.serialize(directory, relative_path=True)
        files = {}
        for name in sorted(os.listdir(directory)):
            if name == DOCIDS_PICKLE:
                continue
            with open(os.path.join(directory, name), "rb") as handle:
                files[name] = handle.read()
        return files


def load_searcher(serialized: SerializedSearcher) -> scann.scann_ops_pybind.ScannSearcher:
    """Rebuilds a searcher from its serialized files and docids (no training).

    Raises ValueError when a file is missing, altered or malformed."""
    files = serialized.files
    if digests(files) != serialized.sha256:
        raise ValueError("ScaNN files do not match their recorded SHA-256 digests")
    for name, data in files.items():
        if name.endswith(".npy"):
            _check_npy(name, data)
    with tempfile.TemporaryDirectory(prefix="scann-load-") as directory:
        for name, data in files.items():
            if name != os.path.basename(name) or name in ("", ".", "..", DOCIDS_PICKLE):
                raise ValueError(f"unexpected ScaNN asset name {name!r}")
            with open(os.path.join(directory, name), "wb") as handle:
                handle.write(data)
        loaded = scann.scann_ops_pybind.load_searcher(directory, assets_backcompat_shim=False)
        return scann.scann_ops_pybind.ScannSearcher(loaded.searcher, list(serialized.docids))


def _check_npy(name: str, data: bytes) -> None:
    """Raises ValueError unless data is a complete .npy array of a plain dtype."""
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            header = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            header = np.lib.format.read_array_header_2_0(stream)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except Exception as exc:
        raise ValueError(f"{name}: not a .npy file ({exc})") from exc
    shape, _, dtype = header
    if dtype.hasobject:
        raise ValueError(f"{name}: object arrays are not ScaNN assets")
    expected = stream.tell() + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(f"{name}: {len(data)} bytes where the header implies {expected}")
