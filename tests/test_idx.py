"""IDX files and the data sets made of them: the reader, a folder of IDX files, ``--data fashion-mnist``."""

import gzip
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from autoprune.data import load_data
from autoprune.errors import ConfigError
from autoprune.idx import FASHION_MNIST_DIR, read_idx, read_idx_set, write_idx

from .conftest import cli_env


@pytest.mark.parametrize("name", ["a-idx3-ubyte", "a-idx3-ubyte.gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.int16])
def test_read_idx_round_trips_plain_and_gzipped(tmp_path, name, dtype):
    arr = (np.arange(2 * 3 * 5) * 7 % 251).astype(dtype).reshape(2, 3, 5)
    path = write_idx(tmp_path / name, arr)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == name.endswith(".gz")
    back = read_idx(path)
    assert back.dtype == arr.dtype and back.shape == arr.shape and np.array_equal(back, arr)


def test_read_idx_writes_the_format_by_hand(tmp_path):
    raw = bytes([0, 0, 0x08, 1]) + (3).to_bytes(4, "big") + bytes([5, 6, 7])  # big-endian sizes
    (tmp_path / "l-idx1-ubyte").write_bytes(raw)
    assert read_idx(tmp_path / "l-idx1-ubyte").tolist() == [5, 6, 7]
    big = bytes([0, 0, 0x0B, 1]) + (2).to_bytes(4, "big") + (258).to_bytes(2, "big") + (1).to_bytes(2, "big")
    (tmp_path / "s-idx1-ubyte").write_bytes(big)
    assert read_idx(tmp_path / "s-idx1-ubyte").tolist() == [258, 1]


def _one_line(exc) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_read_idx_refuses_a_truncated_or_malformed_file_in_one_line(tmp_path):
    good = write_idx(tmp_path / "x-idx3-ubyte", np.zeros((4, 3, 3), np.uint8)).read_bytes()
    cases = {
        "cut-idx3-ubyte": (good[:-5], r"truncated: shape \(4, 3, 3\) of uint8 needs 36 data bytes, the file has 31"),
        "long-idx3-ubyte": (good + b"\0", "malformed"),
        "head-idx3-ubyte": (good[:9], "too short for 3 dimension sizes"),
        "tiny-idx3-ubyte": (good[:2], "shorter than the 4-byte magic number"),
        "magic-idx3-ubyte": (b"\x00\x00\x07\x03" + good[4:], "is not IDX: magic number 00000703"),
        "cut-idx3-ubyte.gz": (gzip.compress(good)[:-12], "cannot be read"),
    }
    for name, (raw, why) in cases.items():
        (tmp_path / name).write_bytes(raw)
        with pytest.raises(ConfigError, match=why) as exc:
            read_idx(tmp_path / name)
        assert str(tmp_path / name) in _one_line(exc)


def _idx_set(folder, n_train=48, n_test=24, classes=4, side=8, gz=True, prefix=""):
    """A tiny IDX set whose train pixels are 10 + label and test pixels 200 + label, so a split's origin shows."""
    folder.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    for split, n, base in (("train", n_train, 10), ("t10k", n_test, 200)):
        y = np.arange(n, dtype=np.uint8) % classes
        x = np.broadcast_to((base + y)[:, None, None], (n, side, side)).astype(np.uint8)
        write_idx(folder / f"{prefix}{split}-images-idx3-ubyte{ext}", x)
        write_idx(folder / f"{prefix}{split}-labels-idx1-ubyte{ext}", y)
    return folder


def _raw(ds):
    """The pixel values a split was made of (the standardisation is one affine map for all splits)."""
    return ds.tensors[0][:, 0, 0, 0].numpy()


def test_a_folder_of_idx_files_keeps_its_test_files_and_splits_validation_from_train(tmp_path):
    d = load_data(str(_idx_set(tmp_path / "set")), size=16, seed=0)
    assert d.sizes() == {"train": 36, "val": 12, "test": 24}  # validation: a quarter of the train files
    assert d.input_shape == (3, 16, 16) and d.num_classes == 4
    train, val, test = _raw(d.train), _raw(d.val), _raw(d.test)
    assert max(train.max(), val.max()) < test.min()  # test is exactly the t10k files, the others the train files
    for split in (d.train, d.val, d.test):
        assert np.bincount(split.tensors[1].numpy()).tolist() == [len(split) // 4] * 4  # stratified
    assert abs(float(d.train.tensors[0].mean())) < 1e-4  # standardised on the train split
    x, y = next(iter(d.loader("train", 8)))  # the 3 channels are stored once; a batch holds them all
    assert x.shape == (8, 3, 16, 16) and x.is_contiguous() and y.dtype == torch.long
    plain = load_data(str(_idx_set(tmp_path / "plain", gz=False)), size=16, seed=0)
    assert plain.key == d.key and d.key.startswith("idx-") and d.key.endswith("-16-s0")  # contents, not the zip
    assert load_data(str(tmp_path / "set"), size=16, seed=1).key != d.key


def test_a_subset_is_stratified_seeded_and_in_the_key(tmp_path):
    root = str(_idx_set(tmp_path / "set", n_train=400, n_test=200))
    d = load_data(root, size=8, seed=0, max_train_samples=40, max_eval_samples=20)
    assert d.sizes() == {"train": 40, "val": 20, "test": 20}
    for split in (d.train, d.val, d.test):
        assert np.bincount(split.tensors[1].numpy()).tolist() == [len(split) // 4] * 4
    assert d.key.endswith("-8-s0-t40-e20")
    again = load_data(root, size=8, seed=0, max_train_samples=40, max_eval_samples=20)
    assert (again.train.tensors[0] == d.train.tensors[0]).all()
    assert load_data(root, size=8, seed=0, max_train_samples=40).key.endswith("-s0-t40")
    with pytest.raises(ConfigError, match="cannot hold one of each of the 4 classes"):
        load_data(root, size=8, max_train_samples=3)


def test_idx_folder_refusals_are_one_line(tmp_path):
    _idx_set(tmp_path / "two", prefix="emnist-letters-")
    _idx_set(tmp_path / "two", prefix="emnist-digits-")
    with pytest.raises(ConfigError, match="holds 2 sets") as exc:
        load_data(str(tmp_path / "two"))
    _one_line(exc)
    _idx_set(tmp_path / "half")
    (tmp_path / "half" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(ConfigError, match="lacks test-labels") as exc:
        read_idx_set(tmp_path / "half")
    _one_line(exc)


def test_data_fashion_mnist_without_the_package_is_one_line_and_exit_2(tmp_path):
    env = {**cli_env(tmp_path / "results"), "AUTOPRUNE_FASHION_MNIST_DIR": str(tmp_path / "absent")}
    proc = subprocess.run([sys.executable, "-m", "autoprune", "train", "--data", "fashion-mnist", "--no-progress",
                           "--device", "cpu"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "fashion-mnist is not installed: run `apt-get install dataset-fashion-mnist`" in lines[0]
    assert str(tmp_path / "absent") in lines[0]


needs_fashion = pytest.mark.skipif(not Path(FASHION_MNIST_DIR).is_dir(),
                                   reason=f"no {FASHION_MNIST_DIR}: `apt-get install dataset-fashion-mnist`")


@needs_fashion
def test_real_fashion_mnist_subset(monkeypatch):
    monkeypatch.delenv("AUTOPRUNE_FASHION_MNIST_DIR", raising=False)
    d = load_data("fashion-mnist", size=32, seed=0, max_train_samples=500)
    assert d.name == "fashion-mnist" and d.num_classes == 10 and d.input_shape == (3, 32, 32)
    assert d.sizes() == {"train": 500, "val": 15_000, "test": 10_000}  # test: t10k; val: a quarter of 60,000
    assert np.bincount(d.train.tensors[1].numpy()).tolist() == [50] * 10  # stratified
    assert np.bincount(d.test.tensors[1].numpy()).tolist() == [1000] * 10
    assert load_data(FASHION_MNIST_DIR, size=32, seed=0, max_train_samples=500).key == d.key  # by contents
