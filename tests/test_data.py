import numpy as np
import pytest
import torch

from autoprune.data import load_data, split_indices
from autoprune.errors import ConfigError


def _xs(ds):
    return ds.tensors[0]


def test_digits_splits_sizes_disjoint_deterministic():
    a, b = load_data("digits"), load_data("digits")
    sizes = a.sizes()
    assert sum(sizes.values()) == 1797
    assert sizes == {"train": 1078, "val": 359, "test": 360}
    assert a.input_shape == (3, 32, 32) and a.num_classes == 10
    for split in ("train", "val", "test"):
        assert torch.equal(_xs(getattr(a, split)), _xs(getattr(b, split)))
    tr, va, te = split_indices(np.repeat(np.arange(10), 50), seed=0)
    assert not (set(tr) & set(va) or set(tr) & set(te) or set(va) & set(te))
    assert len(tr) + len(va) + len(te) == 500
    c = load_data("digits", seed=1)
    assert not torch.equal(_xs(a.train), _xs(c.train))


def test_digits_every_class_in_every_split():
    d = load_data("digits")
    for split in ("train", "val", "test"):
        assert set(getattr(d, split).tensors[1].tolist()) == set(range(10))


def test_npz(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((60, 16, 16, 3)).astype(np.float32)
    y = np.repeat(np.arange(3), 20)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    d = load_data(str(tmp_path / "d.npz"))
    assert d.input_shape == (3, 16, 16) and d.num_classes == 3
    assert sum(d.sizes().values()) == 60
    np.savez(tmp_path / "bad.npz", a=x)
    with pytest.raises(ConfigError, match="'x' and 'y'"):
        load_data(str(tmp_path / "bad.npz"))


def test_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(10):
            Image.fromarray((rng.random((20, 20, 3)) * 255).astype(np.uint8)).save(tmp_path / cls / f"{i}.png")
    d = load_data(str(tmp_path), size=24)
    assert d.input_shape == (3, 24, 24) and d.num_classes == 2 and sum(d.sizes().values()) == 20


def test_module_function_loaders(tmp_path, monkeypatch):
    (tmp_path / "mydata.py").write_text(
        "import torch\nfrom torch.utils.data import DataLoader, TensorDataset\n"
        "def loaders():\n"
        "    ds = TensorDataset(torch.randn(20, 3, 8, 8), torch.arange(20) % 2)\n"
        "    return DataLoader(ds, 4), DataLoader(ds, 4), DataLoader(ds, 4)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    d = load_data("mydata:loaders")
    assert d.input_shape == (3, 8, 8) and d.num_classes == 2


@pytest.mark.parametrize("spec", ["imagenet", "missing.npz", "a:b:c"])
def test_unknown_or_bad_dataset(spec):
    with pytest.raises(ConfigError):
        load_data(spec)


# -- values refused at load (issue #28) ----------------------------------------------------------------


def _npz(path, x, y):
    np.savez(path, x=x, y=y)
    return str(path)


def _images(n=60, side=8):
    return np.random.default_rng(0).random((n, side, side, 3)).astype(np.float32), np.repeat(np.arange(3), n // 3)


@pytest.mark.parametrize("bad,word", [(np.nan, "NaN"), (np.inf, "infinite"), (-np.inf, "infinite")])
def test_nan_or_inf_in_an_npz_is_refused_with_the_count_and_first_sample(tmp_path, bad, word):
    x, y = _images()
    x[17, 2, 3, 0] = bad
    x[40, 0, 0, 1] = bad
    with pytest.raises(ConfigError) as err:
        load_data(_npz(tmp_path / "d.npz", x, y))
    msg = str(err.value)
    assert "2 NaN or infinite input value(s) in 2 sample(s), the first in sample 17" in msg and word in msg
    assert "--lr" not in msg and "\n" not in msg


def test_float_labels_are_refused_not_truncated(tmp_path):
    x, _ = _images(4)
    with pytest.raises(ConfigError, match=r"2 label\(s\) are not class indices .* the first y\[0\] = 0\.7"):
        load_data(_npz(tmp_path / "f.npz", x, np.array([0.7, 1.7, 1.0, 0.0])))
    with pytest.raises(ConfigError, match=r"y\[2\] = -1"):
        load_data(_npz(tmp_path / "n.npz", x, np.array([0, 1, -1, 1])))
    with pytest.raises(ConfigError, match="one class index per sample"):
        load_data(_npz(tmp_path / "h.npz", x, np.eye(4)))
    whole = load_data(_npz(tmp_path / "w.npz", *_images(60)[:1], np.repeat([0.0, 1.0, 2.0], 20)))
    assert whole.num_classes == 3 and whole.train.tensors[1].dtype == torch.long  # integral floats are fine


def test_a_data_function_is_scanned_in_every_split(tmp_path, monkeypatch):
    (tmp_path / "baddata.py").write_text(
        "import torch\nfrom torch.utils.data import DataLoader, TensorDataset\n"
        "def _ds(nan=False):\n"
        "    x = torch.randn(20, 3, 8, 8)\n"
        "    if nan:\n"
        "        x[13, 0, 0, 0] = float('nan')\n"
        "    return TensorDataset(x, torch.arange(20) % 2)\n"
        "def nan_in_test():\n"
        "    return DataLoader(_ds(), 4), DataLoader(_ds(), 4), DataLoader(_ds(True), 4)\n"
        "def float_labels():\n"
        "    ds = TensorDataset(torch.randn(8, 3, 8, 8), torch.tensor([0.7, 1.7] * 4))\n"
        "    return DataLoader(ds, 4), DataLoader(ds, 4), DataLoader(ds, 4)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match=r"\(test split, in the order it yields\): 1 NaN .* the first in sample 13"):
        load_data("baddata:nan_in_test")
    with pytest.raises(ConfigError, match=r"train labels are torch.float32; give integer class indices"):
        load_data("baddata:float_labels")


def test_an_input_smaller_than_the_models_downsampling_is_refused():
    from autoprune.models import build_model
    from autoprune.train import check_model_fits

    data = load_data("digits", size=1)
    with pytest.raises(ConfigError, match=r"input 1x1 px is too small .* downsamples 4x .* --input-size 4 or more"):
        check_model_fits(build_model("resnet20", num_classes=10), data)
    check_model_fits(build_model("resnet20", num_classes=10), load_data("digits", size=4))
    for name in ("resnet18", "mobilenet_v2", "vgg11"):  # 32x downsampling: digits' 32 px is just enough
        check_model_fits(build_model(name, num_classes=10), load_data("digits"))


# -- checkpoints keyed by the data's contents (issue #28) ----------------------------------------------


def test_the_data_key_follows_the_contents_not_the_path(tmp_path):
    from autoprune.train import checkpoint_path

    x, y = _images()
    a = load_data(_npz(tmp_path / "a.npz", x, y))
    (tmp_path / "moved").mkdir()
    moved = load_data(_npz(tmp_path / "moved" / "a.npz", x, y))
    assert moved.key == a.key  # the same data, elsewhere: the same checkpoint
    x[0, 0, 0, 0] += 0.5
    replaced = load_data(_npz(tmp_path / "a.npz", x, y))  # new data at the old path
    assert replaced.key != a.key
    assert checkpoint_path("tiny", replaced, 0) != checkpoint_path("tiny", a, 0)
    # digits keeps its name: the cached default model is still found
    assert checkpoint_path("vgg11", load_data("digits"), 0).name == "vgg11-digits32-s0-train0.pt"
    assert load_data("digits", size=16, seed=1).key == "digits16-s1"


def test_a_large_file_is_keyed_by_size_time_and_samples(tmp_path):
    import os

    from autoprune.io import content_digest

    f = tmp_path / "big.bin"
    f.write_bytes(bytes(range(256)) * 4096)  # 1 MiB
    full, sampled = content_digest(f), content_digest(f, full_max_bytes=1024)
    assert full != sampled and content_digest(f, full_max_bytes=1024) == sampled
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # rewritten: a new modification time
    assert content_digest(f, full_max_bytes=1024) != sampled and content_digest(f) == full


def test_an_image_folder_is_keyed_by_its_images(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(5):
            Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8)).save(tmp_path / "imgs" / cls / f"{i}.png")
    before = load_data(str(tmp_path / "imgs"), size=8).key
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "imgs" / "cat" / "0.png")
    assert load_data(str(tmp_path / "imgs"), size=8).key != before


def test_train_retrains_on_data_replaced_at_the_same_path(tmp_path, monkeypatch, capsys):
    from autoprune.cli import main
    from tests.conftest import TINY_REF

    monkeypatch.setenv("AUTOPRUNE_RESULTS", str(tmp_path / "results"))
    x, y = _images(60, 8)
    path = _npz(tmp_path / "d.npz", x, y)
    args = ["train", "--model", TINY_REF, "--data", path, "--epochs", "1", "--no-progress", "--device", "cpu"]
    assert main(args) == 0
    assert "trained in" in capsys.readouterr().out
    assert main(args) == 0
    assert "loaded from cache" in capsys.readouterr().out
    _npz(tmp_path / "d.npz", x[::-1].copy(), y)  # other data, same path
    assert main(args) == 0
    assert "trained in" in capsys.readouterr().out


def test_a_training_faster_than_the_clock_is_still_reported_as_trained(tmp_path, monkeypatch, capsys):
    """A tiny model on a quiet host trained in under 5 ms, its seconds rounded to 0.0, and ``train`` said
    "loaded from cache" (a CI run of the test above failed so): whether it trained is not read from the time."""
    import types

    from autoprune import train
    from autoprune.cli import main
    from tests.conftest import TINY_REF

    monkeypatch.setenv("AUTOPRUNE_RESULTS", str(tmp_path / "results"))
    monkeypatch.setattr(train, "time", types.SimpleNamespace(perf_counter=lambda: 7.0))  # no time passes
    path = _npz(tmp_path / "d.npz", *_images(60, 8))
    args = ["train", "--model", TINY_REF, "--data", path, "--epochs", "1", "--no-progress", "--device", "cpu"]
    assert main(args) == 0
    assert "trained in 0 s" in capsys.readouterr().out
    assert main(args) == 0
    assert "loaded from cache" in capsys.readouterr().out


def test_digits_subset_and_its_key():
    d = load_data("digits", max_train_samples=100, max_eval_samples=50)
    assert d.sizes() == {"train": 100, "val": 50, "test": 50} and d.key == "digits32-s0-t100-e50"
    assert set(d.train.tensors[1].tolist()) == set(range(10))
    assert load_data("digits").key == "digits32-s0"  # no subset: the key of before
