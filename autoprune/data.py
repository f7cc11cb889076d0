"""Data sets: built-in ``digits``, ``fashion-mnist`` (the OS package), a folder of IDX files, a user's ``.npz``,
an image folder, or ``module:function``.

Every source becomes a :class:`DataSplits` of train / validation / test tensors,
split with a fixed seed and no overlap (an IDX set keeps its own test files), optionally cut to a
stratified, seeded subset (``max_train_samples``, ``max_eval_samples``). Nothing is downloaded. Inputs
must be finite and labels integer class indices (:func:`check_values`), checked as the data is loaded.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from autoprune.errors import ConfigError
from autoprune.idx import fashion_mnist_folder, has_idx_files, read_idx_set
from autoprune.io import content_digest

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
SPLIT_FRACTIONS = (0.6, 0.2, 0.2)  # train, validation, test


@dataclass(frozen=True)
class DataSplits:
    """Train, validation and test splits of one data set.

    Attributes:
        name: The data set's reference, as given by the user.
        key: A short identifier of the data's *contents*, which keys cached checkpoints: ``digits<size>-s<seed>``
            for the built-in digits; for a ``.npz`` or an image folder a digest of its files' bytes
            (:func:`autoprune.io.content_digest`), so a file replaced at the same path is new data and
            the same file moved is not; for an IDX set (``fashion-mnist`` included) a digest of its
            decompressed files, with the size; for ``module:function`` the reference and its source file.
            A subset adds ``-t<max_train_samples>`` and/or ``-e<max_eval_samples>``.
        train, val, test: ``TensorDataset``s of ``(x, y)``, or user ``DataLoader``s.
        num_classes: Number of classes.
        input_shape: ``(C, H, W)`` of one sample.
    """

    name: str
    key: str
    train: object
    val: object
    test: object
    num_classes: int
    input_shape: tuple[int, int, int]

    def loader(self, split: str, batch_size: int = 64, shuffle: bool | None = None, seed: int = 0, *,
               pin_memory: bool = False) -> DataLoader:
        """Return a ``DataLoader`` over ``split`` (``train``, ``val`` or ``test``).

        Args:
            split: ``train``, ``val`` or ``test``.
            batch_size: Samples per batch.
            shuffle: Shuffle (default: only ``train``), with a generator seeded by ``seed``.
            seed: The shuffle seed (the order does not depend on the device).
            pin_memory: Pin the batches in host memory, for asynchronous copies to a CUDA GPU
                (:attr:`autoprune.compute.Compute.pin_memory`). The splits are tensors in memory,
                which this process slices faster than worker processes would, so no workers are
                started; a user's own ``DataLoader`` is returned as given, with its own settings.
        """
        ds = {"train": self.train, "val": self.val, "test": self.test}.get(split)
        if ds is None:
            raise ConfigError(f"unknown split {split!r}; valid: train, val, test")
        if isinstance(ds, DataLoader):
            return ds
        shuffle = split == "train" if shuffle is None else shuffle
        gen = torch.Generator().manual_seed(seed)
        return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=gen, pin_memory=pin_memory)

    def example_input(self, batch: int = 1) -> torch.Tensor:
        """A deterministic example input of the data's shape (for tracing and export)."""
        return torch.randn((batch, *self.input_shape), generator=torch.Generator().manual_seed(0))

    def sizes(self) -> dict[str, int]:
        """Number of samples per split (``-1`` where a user loader hides it)."""
        out = {}
        for name, ds in (("train", self.train), ("val", self.val), ("test", self.test)):
            try:
                out[name] = len(ds.dataset) if isinstance(ds, DataLoader) else len(ds)  # type: ignore[arg-type]
            except TypeError:
                out[name] = -1
        return out


def split_indices(labels: np.ndarray, seed: int = 0, fractions=SPLIT_FRACTIONS) -> tuple[np.ndarray, ...]:
    """Stratified, seeded, disjoint train/val/test indices covering every sample once."""
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[], [], []]
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        rng.shuffle(idx)
        n_train = int(round(fractions[0] * len(idx)))
        n_val = int(round(fractions[1] * len(idx)))
        parts[0] += idx[:n_train].tolist()
        parts[1] += idx[n_train : n_train + n_val].tolist()
        parts[2] += idx[n_train + n_val :].tolist()
    return tuple(np.sort(np.asarray(p, dtype=np.int64)) for p in parts)


def stratified_subset(labels: np.ndarray, n: int | None, seed: int = 0) -> np.ndarray:
    """Sorted indices of a stratified, seeded subset of ``n`` of ``labels`` (all when ``n`` is ``None`` or not
    smaller): each class keeps its share, drawn with ``seed``. ConfigError: ``n`` is below the class count."""
    labels = np.asarray(labels)
    if n is None or n >= len(labels):
        return np.arange(len(labels))
    classes, counts = np.unique(labels, return_counts=True)
    if n < len(classes):
        raise ConfigError(f"a subset of {n} sample(s) cannot hold one of each of the {len(classes)} classes; "
                          f"give at least {len(classes)}")
    quota = counts * n / len(labels)
    take = np.floor(quota).astype(np.int64)
    take[np.argsort(-(quota - take), kind="stable")[: n - int(take.sum())]] += 1  # largest remainders round up
    rng = np.random.default_rng([seed, 1])  # another stream than the split's
    parts = [rng.permutation(np.flatnonzero(labels == cls))[:k] for cls, k in zip(classes, take)]
    return np.sort(np.concatenate(parts))


def _subset(data: DataSplits, max_train: int | None, max_eval: int | None, seed: int) -> DataSplits:
    """``data`` with its train split cut to ``max_train`` and validation and test to ``max_eval`` (stratified)."""
    if max_train is None and max_eval is None:
        return data
    cut = {}
    for split, n in (("train", max_train), ("val", max_eval), ("test", max_eval)):
        if not isinstance(ds := getattr(data, split), TensorDataset):
            raise ConfigError(f"data {data.name!r}: a module:function's loaders are used as given; cut them there, "
                              "not with --max-train-samples/--max-eval-samples")
        idx = torch.as_tensor(stratified_subset(ds.tensors[1].numpy(), n, seed))
        cut[split] = ds if len(idx) == len(ds) else TensorDataset(*(t[idx] for t in ds.tensors))
    return replace(data, key=data.key + subset_suffix(max_train, max_eval), **cut)


def subset_suffix(max_train: int | None, max_eval: int | None) -> str:
    """What a subset adds to :attr:`DataSplits.key` (nothing without one: older keys stay valid)."""
    return (f"-t{max_train}" if max_train is not None else "") + (f"-e{max_eval}" if max_eval is not None else "")


def check_values(name: str, x, y, offset: int = 0) -> None:
    """Refuse non-finite inputs and labels that are not class indices, naming how many and the first.

    Args:
        name: What the data is called in the message (a file, a loader).
        x: Inputs, ``(N, ...)`` (a NumPy array or a tensor).
        y: Labels, ``(N,)``.
        offset: Index of ``x[0]`` in the whole data set (for a batch of a loader).

    Raises:
        ConfigError: A NaN or infinite input (training would diverge, and the blame would fall on
            ``--lr``), or a label that is not an integer >= 0 (a float label would be truncated).
    """
    x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    y = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if y.ndim != 1:
        raise ConfigError(f"data {name}: labels must be one class index per sample, shape (N,), got shape "
                          f"{tuple(y.shape)} (one-hot labels: take y.argmax(1))")
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating) or y.dtype == bool):
        raise ConfigError(f"data {name}: labels must be integer class indices, got dtype {y.dtype}")
    if (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.complexfloating)) and x.size:
        finite = np.isfinite(x)
        bad = ~finite.reshape(len(x), -1).all(axis=1)
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            count = int(x.size - finite.sum())
            raise ConfigError(f"data {name}: {count} NaN or infinite input value(s) in {int(bad.sum())} sample(s), "
                              f"the first in sample {offset + first}; remove those samples or replace the values")
    labels = y.astype(np.float64, copy=False)
    bad = ~np.isfinite(labels) | (labels < 0) | (np.floor(labels) != labels) if labels.size else np.zeros(0, bool)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ConfigError(f"data {name}: {int(bad.sum())} label(s) are not class indices (integers >= 0), the first "
                          f"y[{offset + first}] = {y[first].item()!r}; give integer labels 0..K-1")


def _to_splits(name: str, key: str, x: np.ndarray, y: np.ndarray, seed: int) -> DataSplits:
    check_values(repr(name), x, y)
    x_t = torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32)
    y_t = torch.as_tensor(np.asarray(y).astype(np.int64), dtype=torch.long)
    labels = y_t.numpy()
    classes = np.unique(labels)
    if classes.min() < 0 or len(classes) < 2:
        raise ConfigError(f"data {name!r}: labels must be integers >= 0 with at least 2 classes")
    tr, va, te = split_indices(labels, seed)
    return DataSplits(
        name=name,
        key=key,
        train=TensorDataset(x_t[tr], y_t[tr]),
        val=TensorDataset(x_t[va], y_t[va]),
        test=TensorDataset(x_t[te], y_t[te]),
        num_classes=int(classes.max()) + 1,
        input_shape=tuple(x_t.shape[1:]),  # type: ignore[arg-type]
    )


def _standardise(x: np.ndarray) -> np.ndarray:
    mean = x.mean(axis=(0, 2, 3), keepdims=True)
    std = x.std(axis=(0, 2, 3), keepdims=True) + 1e-6
    return ((x - mean) / std).astype(np.float32)


def load_digits(size: int = 32, seed: int = 0) -> DataSplits:
    """scikit-learn's 1,797 real 8×8 handwritten digits, upsampled to ``size`` and 3 channels."""
    from sklearn.datasets import load_digits as _load

    bunch = _load()
    x = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = _standardise(x.repeat(1, 3, 1, 1).numpy())
    return _to_splits("digits", f"digits{size}-s{seed}", x, bunch.target, seed)


def load_idx_folder(root: Path, size: int = 32, seed: int = 0, *, max_train_samples: int | None = None,
                    max_eval_samples: int | None = None, name: str | None = None) -> DataSplits:
    """A folder of IDX files (MNIST, Fashion-MNIST, KMNIST, EMNIST: :func:`autoprune.idx.idx_files`). Test is
    its test files; validation a stratified, seeded quarter (SPLIT_FRACTIONS' 0.2 of 0.8) of its train files,
    whatever the subsets, which are drawn first: only kept images are resized (bilinear, like digits), made
    3-channel and standardised (with the train split's mean and deviation)."""
    s = read_idx_set(root)
    share = SPLIT_FRACTIONS[1] / (SPLIT_FRACTIONS[0] + SPLIT_FRACTIONS[1])
    tr, va, rest = split_indices(s.train_y, seed, (1 - share, share, 0.0))
    tr = np.sort(np.concatenate([tr, rest]))  # a sample the rounding left over trains
    tr = tr[stratified_subset(s.train_y[tr], max_train_samples, seed)]
    va = va[stratified_subset(s.train_y[va], max_eval_samples, seed)]
    te = stratified_subset(s.test_y, max_eval_samples, seed)
    parts = [(s.train_x[tr], s.train_y[tr]), (s.train_x[va], s.train_y[va]), (s.test_x[te], s.test_y[te])]
    for x, y in parts:
        check_values(f"IDX folder {root}", x, y)
    scale = 255.0 if s.train_x.dtype == np.uint8 else 1.0
    xs = [torch.nn.functional.interpolate(torch.as_tensor(_as_nchw(x.astype(np.float32), str(root))) / scale,
                                          size=(size, size), mode="bilinear", align_corners=False) for x, _ in parts]
    mean, std = xs[0].mean(dim=(0, 2, 3), keepdim=True), xs[0].std(dim=(0, 2, 3), keepdim=True) + 1e-6
    sets = []
    for x, (_, y) in zip(xs, parts):
        x = (x - mean) / std
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x  # 3 channels like digits, stored once
        sets.append(TensorDataset(x, torch.as_tensor(y.astype(np.int64))))
    key = f"idx-{s.digest[:10]}-{size}-s{seed}" + subset_suffix(max_train_samples, max_eval_samples)
    return DataSplits(name or str(root), key, *sets, num_classes=int(max(s.train_y.max(), s.test_y.max())) + 1,
                      input_shape=tuple(sets[0].tensors[0].shape[1:]))  # type: ignore[arg-type]


def _as_nchw(x: np.ndarray, name: str) -> np.ndarray:
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        x = x.transpose(0, 3, 1, 2)
    if x.ndim != 4:
        raise ConfigError(f"data {name!r}: x must have shape (N, H, W), (N, C, H, W) or (N, H, W, C)")
    return x


def load_npz(path: Path, seed: int = 0) -> DataSplits:
    """A ``.npz`` file with arrays ``x`` (images) and ``y`` (integer labels)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            if "x" not in f or "y" not in f:
                raise ConfigError(f"data file {path} must hold arrays 'x' and 'y' (has {sorted(f.files)})")
            x, y = f["x"], f["y"]
    except (ValueError, OSError) as exc:
        raise ConfigError(f"data file {path} cannot be read as .npz: {exc}") from None
    if len(x) != len(y):
        raise ConfigError(f"data file {path}: x has {len(x)} samples but y has {len(y)}")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise ConfigError(f"data file {path}: x must hold real numbers, got dtype {x.dtype}")
    x = _as_nchw(np.asarray(x, dtype=np.float32), str(path))
    check_values(f"file {path}", x, y)  # before scaling (an infinity would spread); sample order is the file's
    if x.max() > 1.5:
        x = x / 255.0
    return _to_splits(str(path), f"npz-{content_digest(path)[:10]}-s{seed}", _standardise(x), np.asarray(y), seed)


def load_image_folder(root: Path, size: int = 32, seed: int = 0) -> DataSplits:
    """An image folder with one sub-folder per class, read with Pillow (no torchvision)."""
    from PIL import Image

    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if len(classes) < 2:
        raise ConfigError(f"image folder {root} needs one sub-folder per class (found {len(classes)})")
    xs, ys = [], []
    contents = hashlib.sha256()  # the key: what each class folder holds, not where the folder is
    for label, cls in enumerate(classes):
        for f in sorted((root / cls).iterdir()):
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            contents.update(f"{label}/{f.name}:{content_digest(f)}\n".encode())
            try:
                with Image.open(f) as im:
                    arr = np.asarray(im.convert("RGB").resize((size, size)), dtype=np.float32) / 255.0
            except OSError as exc:
                raise ConfigError(f"image {f} cannot be read: {exc}") from None
            xs.append(arr.transpose(2, 0, 1))
            ys.append(label)
    if not xs:
        raise ConfigError(f"image folder {root} has no images ({', '.join(IMAGE_SUFFIXES)})")
    x = _standardise(np.stack(xs))
    contents.update(f"classes:{classes}".encode())
    return _to_splits(str(root), f"folder-{contents.hexdigest()[:10]}-{size}-s{seed}", x, np.asarray(ys), seed)


def _from_function(spec: str, seed: int) -> DataSplits:
    from autoprune.models import resolve_callable

    func = resolve_callable(spec, "data")
    try:
        out = func()
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"data function {spec!r} failed: {exc.__class__.__name__}: {exc}") from None
    if isinstance(out, DataSplits):
        return out
    if isinstance(out, dict):
        out = (out.get("train"), out.get("val"), out.get("test"))
    if not (isinstance(out, (tuple, list)) and len(out) == 3 and all(isinstance(d, DataLoader) for d in out)):
        raise ConfigError(f"data function {spec!r} must return (train, val, test) DataLoaders or a DataSplits")
    x, ys = _scan_loaders(spec, out)
    return DataSplits(spec, f"fn-{_function_digest(spec, func)}-s{seed}", *out,
                      num_classes=int(ys.max()) + 1, input_shape=tuple(x.shape[1:]))


def _scan_loaders(spec: str, loaders) -> tuple[torch.Tensor, torch.Tensor]:
    """Check every batch of the three loaders (:func:`check_values`); return the first inputs and the train labels."""
    first, train_labels = None, []
    for split, loader in zip(("train", "val", "test"), loaders):
        seen = 0
        for batch in loader:
            if not (isinstance(batch, (tuple, list)) and len(batch) >= 2):
                raise ConfigError(f"data function {spec!r}: each {split} batch must be (inputs, labels)")
            x, y = batch[0], batch[1]
            if isinstance(y, torch.Tensor) and (y.is_floating_point() or y.is_complex()):
                raise ConfigError(f"data function {spec!r}: {split} labels are {y.dtype}; give integer class "
                                  "indices (e.g. y.long())")
            check_values(f"function {spec!r} ({split} split, in the order it yields)", x, y, offset=seen)
            seen += len(y)
            first = x if first is None else first
            if split == "train":
                train_labels.append(torch.as_tensor(y))
    if first is None or not train_labels:
        raise ConfigError(f"data function {spec!r}: the train loader is empty")
    return first, torch.cat(train_labels)


def _function_digest(spec: str, func) -> str:
    """``spec`` and its source file's contents: editing the data function retrains its checkpoints."""
    import inspect

    h = hashlib.sha256(spec.encode())
    try:
        source = inspect.getsourcefile(func)
    except TypeError:
        source = None
    if source and Path(source).is_file():
        h.update(content_digest(source).encode())
    return h.hexdigest()[:10]


BUILTIN_DATA = ("digits", "fashion-mnist")


def load_data(spec: str = "digits", *, size: int = 32, seed: int = 0, max_train_samples: int | None = None,
              max_eval_samples: int | None = None) -> DataSplits:
    """Load a data set by reference.

    Args:
        spec: ``digits``, ``fashion-mnist``, a folder of IDX files (``*-idx?-ubyte[.gz]``), a ``.npz`` path,
            an image-folder path, or ``module:function`` returning ``(train, val, test)`` loaders.
        size: Square image side for ``digits``, IDX sets and image folders.
        seed: Split seed (and the subsets').
        max_train_samples: Keep a stratified, seeded subset of this many training samples (``None``: all).
        max_eval_samples: The same for the validation and the test split, each.

    Raises:
        ConfigError: For an unknown name, a missing path, unreadable data, or ``fashion-mnist`` not installed.
    """
    cuts = {"max_train_samples": max_train_samples, "max_eval_samples": max_eval_samples}
    if spec == "fashion-mnist":
        return load_idx_folder(fashion_mnist_folder(), size, seed, **cuts, name="fashion-mnist")
    path = Path(spec)
    if path.is_dir() and has_idx_files(path):
        return load_idx_folder(path, size, seed, **cuts)
    if spec == "digits":
        data = load_digits(size, seed)
    elif path.suffix == ".npz":
        if not path.is_file():
            raise ConfigError(f"data file not found: {path}")
        data = load_npz(path, seed)
    elif path.is_dir():
        data = load_image_folder(path, size, seed)
    elif ":" in spec:
        data = _from_function(spec, seed)
    else:
        raise ConfigError(f"unknown dataset {spec!r}; valid: {', '.join(BUILTIN_DATA)}, a folder of IDX files, "
                          "a .npz file, an image folder, or module:function")
    return _subset(data, max_train_samples, max_eval_samples, seed)


def natural_input_size(model_ref: str, data_ref: str = "digits") -> int:
    """The input side of ``model_ref`` on ``data_ref`` when no ``--input-size`` is given
    (:func:`autoprune.models.natural_input_size`, the one rule, with the data named)."""
    from autoprune.models import natural_input_size as rule

    return rule(model_ref, data_ref)


def load_data_for(model_ref: str, data_ref: str = "digits", *, input_size: int | None = None,
                  seed: int = 0, max_train_samples: int | None = None,
                  max_eval_samples: int | None = None) -> DataSplits:
    """The data of a model at its input size (``input_size``, else :func:`natural_input_size`).

    ``train``, ``profile`` and ``search`` all load data through this, so they key the same
    checkpoint and the same calibration.
    """
    size = input_size if input_size is not None else natural_input_size(model_ref, data_ref)
    return load_data(data_ref, size=size, seed=seed, max_train_samples=max_train_samples,
                     max_eval_samples=max_eval_samples)
