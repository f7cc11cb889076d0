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
