"""The dense checkpoint's key: the data's contents and subset, the seed and the recipe."""

import json

import pytest
import torch

from autoprune.data import load_data
from autoprune.errors import ConfigError
from autoprune.train import TrainConfig, checkpoint_path, recipe_tag


@pytest.fixture(scope="module")
def digits():
    return load_data("digits")


@pytest.fixture
def results(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOPRUNE_RESULTS", str(tmp_path))
    return tmp_path


def _cache(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    path.with_suffix(".json").write_text(json.dumps({}))


def test_the_subset_and_the_epochs_change_the_checkpoint_key(results, digits):
    default = checkpoint_path("vgg11", digits, 0, TrainConfig())
    assert default.name == "vgg11-digits32-s0-train0.pt"  # the default recipe keeps its name
    assert checkpoint_path("vgg11", digits, 0) == default
    assert checkpoint_path("vgg11", digits, 0, TrainConfig(seed=3)) == default  # the seed is named apart
    fewer = checkpoint_path("vgg11", digits, 0, TrainConfig(epochs=3))
    assert fewer.name == "vgg11-digits32-s0-train0-ep3.pt"
    assert checkpoint_path("vgg11", digits, 0, TrainConfig(epochs=3, lr=0.01)).name.endswith("-ep3-lr0.01.pt")
    subset = checkpoint_path("vgg11", load_data("digits", max_train_samples=200), 0, TrainConfig())
    assert subset.name == "vgg11-digits32-s0-t200-train0.pt"
    assert len({default, fewer, subset}) == 3
    assert recipe_tag(None) == recipe_tag(TrainConfig()) == ""


def test_no_recipe_takes_the_cached_one_and_refuses_to_guess_between_two(results, digits):
    fewer = checkpoint_path("vgg11", digits, 0, TrainConfig(epochs=3))
    _cache(fewer)
    assert checkpoint_path("vgg11", digits, 0) == fewer  # `search` after `train --epochs 3` uses it
    _cache(checkpoint_path("vgg11", digits, 0, TrainConfig(epochs=5)))
    with pytest.raises(ConfigError, match=r"2 dense checkpoints .* pick one with --checkpoint PATH"):
        checkpoint_path("vgg11", digits, 0)
    _cache(checkpoint_path("vgg11", digits, 0, TrainConfig()))
    assert checkpoint_path("vgg11", digits, 0).name == "vgg11-digits32-s0-train0.pt"  # the default recipe first
    assert checkpoint_path("vgg11", digits, 1).name == "vgg11-digits32-s0-train1.pt"  # another seed is not taken


def test_train_cli_subset_and_epochs_name_their_checkpoint(tmp_path):
    import subprocess
    import sys

    from .conftest import TINY_REF, cli_env

    proc = subprocess.run([sys.executable, "-m", "autoprune", "train", "--model", TINY_REF, "--epochs", "1",
                           "--max-train-samples", "60", "--max-eval-samples", "30", "--no-progress", "--device", "cpu"],
                          capture_output=True, text=True, env=cli_env(tmp_path), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "checkpoint: " in proc.stdout and proc.stdout.strip().endswith("-digits32-s0-t60-e30-train0-ep1.pt")
    # One step of training is about chance: `train` keeps and reports it, with a warning where a search would refuse it.
    val = float(proc.stdout.split("val accuracy ", 1)[1].split(",", 1)[0])
    assert (val < 0.15) == ("warning: the dense model " in proc.stdout), proc.stdout


def test_old_studies_load_without_the_subset_fields_and_a_new_subset_conflicts():
    from autoprune.search.config import SearchConfig

    old = {k: v for k, v in SearchConfig().to_dict().items() if k not in ("max_train_samples", "max_eval_samples")}
    cfg = SearchConfig.from_dict(old)
    assert cfg.max_train_samples is None and cfg.max_eval_samples is None
    assert SearchConfig(max_train_samples=500).conflicts({"max_train_samples": 1000}) == ["max_train_samples"]


class _SqueezeExcite(torch.nn.Module):
    """A squeeze-excite block as torchvision's MobileNetV3 has: convs on a functionally pooled 1x1 map."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(1, 8, 3, stride=2, padding=1)
        self.fc1, self.fc2 = torch.nn.Conv2d(8, 4, 1), torch.nn.Conv2d(4, 8, 1)
        self.head = torch.nn.Linear(8, 10)

    def forward(self, x):
        x = self.stem(x)
        s = torch.nn.functional.adaptive_avg_pool2d(x, 1)
        x = x * torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))
        return self.head(x.mean((2, 3)))


def test_convs_on_a_pooled_1x1_map_are_not_taken_for_downsampling():
    from autoprune.errors import ConfigError
    from autoprune.train import check_input_size

    check_input_size(_SqueezeExcite(), (1, 16, 16))  # it downsamples 2x, not 128x
    with pytest.raises(ConfigError, match="downsamples 2x"):
        check_input_size(_SqueezeExcite(), (1, 1, 1))
