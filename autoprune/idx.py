"""IDX files (MNIST's format, also Fashion-MNIST's, KMNIST's and EMNIST's): read, write, find a set in a folder.

An IDX file is two zero bytes, a type code (``0x08`` uint8, ``0x09`` int8, ``0x0B`` int16, ``0x0C`` int32,
``0x0D`` float32, ``0x0E`` float64), the number of dimensions, one big-endian uint32 size per dimension, then
the values, big-endian, in C order. A file may be gzipped (``.gz``). A truncated or malformed file is refused
with one :class:`~autoprune.errors.ConfigError` line naming it and what is wrong.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoprune.errors import ConfigError

#: IDX type code -> big-endian NumPy dtype.
IDX_TYPES: dict[int, str] = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
#: A set's file names: ``[prefix]{train|t10k|test}-{images|labels}-idx<N>-ubyte[.gz]`` (EMNIST's prefix is
#: e.g. ``emnist-balanced-``).
IDX_NAME = re.compile(r"^(?P<prefix>.*?)(?P<split>train|t10k|test)-(?P<kind>images|labels)-idx\d-ubyte(?:\.gz)?$")


#: Where Debian's ``dataset-fashion-mnist`` puts its IDX files (``$AUTOPRUNE_FASHION_MNIST_DIR`` overrides it).
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


def fashion_mnist_folder() -> Path:
    """The folder ``--data fashion-mnist`` reads (``$AUTOPRUNE_FASHION_MNIST_DIR``, else :data:`FASHION_MNIST_DIR`).

    Raises:
        ConfigError: It holds no IDX files: the package is not installed (one line with the command to run).
    """
    root = Path(os.environ.get("AUTOPRUNE_FASHION_MNIST_DIR") or FASHION_MNIST_DIR)
    if not (root.is_dir() and has_idx_files(root)):
        raise ConfigError(f"fashion-mnist is not installed: run `apt-get install dataset-fashion-mnist` (it puts "
                          f"the IDX files in {root})")
    return root


def read_idx(path: str | Path) -> np.ndarray:
    """The array an IDX file holds (plain or gzipped), in native byte order.

    Raises:
        ConfigError: The file is missing, truncated, not gzip where it says ``.gz``, or not IDX.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
        if raw[:2] == b"\x1f\x8b":  # gzip's magic, whatever the name says
            raw = gzip.decompress(raw)
    except FileNotFoundError:
        raise ConfigError(f"IDX file {path} not found") from None
    except (OSError, EOFError, zlib.error) as exc:
        raise ConfigError(f"IDX file {path} cannot be read (truncated or corrupt gzip?): {exc}") from None
    return parse_idx(raw, str(path))


def parse_idx(raw: bytes, name: str = "<bytes>") -> np.ndarray:
    """The array of an IDX file's (decompressed) bytes; ``name`` is what errors call it."""
    if len(raw) < 4:
        raise ConfigError(f"IDX file {name} is truncated: {len(raw)} bytes, shorter than the 4-byte magic number")
    zero, code, ndim = raw[:2], raw[2], raw[3]
    if zero != b"\x00\x00" or code not in IDX_TYPES:
        raise ConfigError(f"IDX file {name} is not IDX: magic number {raw[:4].hex()} (want 0000 then a type code "
                          f"of {', '.join(f'{c:02x}' for c in IDX_TYPES)}, then the dimension count)")
    if ndim == 0:
        raise ConfigError(f"IDX file {name} is malformed: 0 dimensions")
    if len(raw) < 4 + 4 * ndim:
        raise ConfigError(f"IDX file {name} is truncated: {len(raw)} bytes, too short for {ndim} dimension sizes")
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    dtype = np.dtype(IDX_TYPES[code])
    want = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    have = len(raw) - 4 - 4 * ndim
    if have != want:
        what = "truncated" if have < want else "malformed"
        raise ConfigError(f"IDX file {name} is {what}: shape {tuple(shape)} of {dtype.name} needs {want} data bytes, "
                          f"the file has {have}")
    out = np.frombuffer(raw, dtype=dtype, offset=4 + 4 * ndim).reshape(shape)
    return out.astype(dtype.newbyteorder("="), copy=False)


def write_idx(path: str | Path, array: np.ndarray) -> Path:
    """Write ``array`` as an IDX file (gzipped when ``path`` ends in ``.gz``); the inverse of :func:`read_idx`."""
    path = Path(path)
    array = np.asarray(array)
    codes = {np.dtype(v).newbyteorder("="): k for k, v in IDX_TYPES.items()}
    code = codes.get(array.dtype.newbyteorder("="))
    if code is None or array.ndim == 0:
        raise ConfigError(f"IDX cannot hold a {array.ndim}-d array of {array.dtype} (types: uint8, int8, int16, "
                          "int32, float32, float64)")
    raw = (bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
           + np.ascontiguousarray(array, dtype=IDX_TYPES[code]).tobytes())
    path.write_bytes(gzip.compress(raw, mtime=0) if path.suffix == ".gz" else raw)
    return path


def has_idx_files(folder: Path) -> bool:
    """Whether ``folder`` holds IDX files by their names (``*-idx?-ubyte[.gz]``): what tells it from an image folder."""
    return any(IDX_NAME.match(p.name) for p in folder.iterdir() if p.is_file())


@dataclass(frozen=True)
class IdxSet:
    """The arrays of one IDX set and a digest of their contents.

    Attributes:
        train_x, train_y: The train files' images ``(N, H, W)`` (or ``(N, H, W, C)``) and labels ``(N,)``.
        test_x, test_y: The test (``t10k``) files'.
        digest: SHA-256 (hex, 16 characters) of the decompressed files, in that order: the same data
            gzipped or not, or moved, has the same digest.
    """

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    digest: str


def idx_files(folder: Path) -> dict[str, Path]:
    """The four files of the one IDX set in ``folder``: ``train-images``, ``train-labels``, ``test-images``,
    ``test-labels`` (``test`` is ``t10k`` or ``test`` in the names; a plain file is preferred to its ``.gz``).

    Raises:
        ConfigError: A file of the set is missing, or the folder holds several sets (EMNIST's folder does:
            point at a folder holding one).
    """
    sets: dict[str, dict[str, Path]] = {}
    for p in sorted(folder.iterdir(), key=lambda p: (p.name.endswith(".gz"), p.name)):
        m = IDX_NAME.match(p.name)
        if m and p.is_file():
            split = "train" if m["split"] == "train" else "test"
            sets.setdefault(m["prefix"], {}).setdefault(f"{split}-{m['kind']}", p)
    if len(sets) > 1:
        names = ", ".join(repr(k.rstrip("-") or "(no prefix)") for k in sorted(sets))
        raise ConfigError(f"IDX folder {folder} holds {len(sets)} sets ({names}); give a folder holding one")
    found = next(iter(sets.values()), {})
    missing = [k for k in ("train-images", "train-labels", "test-images", "test-labels") if k not in found]
    if missing:
        raise ConfigError(f"IDX folder {folder} lacks {', '.join(missing)} (want e.g. train-images-idx3-ubyte.gz, "
                          "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz)")
    return found


def read_idx_set(folder: str | Path) -> IdxSet:
    """Read the IDX set in ``folder`` (:func:`idx_files`), checking that images and labels agree.

    Raises:
        ConfigError: A file is unreadable (:func:`read_idx`), labels are not 1-D, images not 3-D or 4-D,
            or their sample counts differ.
    """
    folder = Path(folder)
    files = idx_files(folder)
    h = hashlib.sha256()
    arrays = {}
    for key in ("train-images", "train-labels", "test-images", "test-labels"):
        arr = read_idx(files[key])
        h.update(f"{key}:{arr.dtype.str}:{arr.shape};".encode())
        h.update(memoryview(np.ascontiguousarray(arr)).cast("B"))
        arrays[key] = arr
    for split in ("train", "test"):
        x, y = arrays[f"{split}-images"], arrays[f"{split}-labels"]
        if y.ndim != 1 or x.ndim not in (3, 4) or len(x) != len(y):
            raise ConfigError(f"IDX folder {folder}: {split} images {tuple(x.shape)} and labels {tuple(y.shape)} do "
                              "not match (want images (N, H, W) and labels (N,))")
    return IdxSet(arrays["train-images"], arrays["train-labels"], arrays["test-images"], arrays["test-labels"],
                  h.hexdigest()[:16])
