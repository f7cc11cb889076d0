"""The dense baseline before a search (#29): the model is traced for its prunable groups before any
training, its BatchNorm statistics are re-estimated where that evaluates better, and one at chance is
refused in one line.

The models are foreign ones of this file's own (:data:`MODELS`), written to a ``.py`` file and referenced
as ``file.py:function``, as a user's are.
"""

from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path

import pytest
import torch

from autoprune import train
from autoprune.data import load_data
from autoprune.errors import ConfigError, PlanError
from tests.conftest import TINY_REF

TRAIN_DENSE = train.train_dense  # the real one, for the fixtures of tests that refuse any other training

MODELS = textwrap.dedent('''
    import torch
    from torch import nn


    def bn_cnn(num_classes=10, in_channels=3):
        """Conv-BN-ReLU x3 with torchvision MobileNetV3's BatchNorm momentum, 0.01."""
        def cbr(i, o):
            return [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o, momentum=0.01), nn.ReLU()]
        return nn.Sequential(*cbr(in_channels, 16), nn.MaxPool2d(2), *cbr(16, 32), nn.MaxPool2d(2), *cbr(32, 32),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes))


    class EvalNumpy(nn.Module):
        """Trains and evaluates, but its eval-mode forward goes through NumPy: no graph Torch-Pruning can trace."""

        def __init__(self, num_classes, in_channels):
            super().__init__()
            self.conv = nn.Conv2d(in_channels, 8, 3, padding=1)
            self.fc = nn.Linear(8, num_classes)

        def forward(self, x):
            logits = self.fc(self.conv(x).mean((2, 3)))
            if self.training:
                return logits
            return torch.from_numpy(logits.numpy() - logits.numpy().max(1, keepdims=True))


    def eval_numpy(num_classes=10, in_channels=3):
        return EvalNumpy(num_classes, in_channels)
''')


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """``name -> file.py:name`` for the models of :data:`MODELS`."""
    path = tmp_path_factory.mktemp("models") / "foreign.py"
    path.write_text(MODELS)
    return {name: f"{path}:{name}" for name in ("bn_cnn", "eval_numpy")}


@pytest.fixture(scope="module")
def small():
    """Digits at 16 px, 500 training samples and 200 each to evaluate: a few training steps take a second."""
    return load_data("digits", size=16, max_train_samples=500, max_eval_samples=200)


@pytest.fixture
def results(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOPRUNE_RESULTS", str(tmp_path / "results"))
    return tmp_path / "results"


@pytest.fixture
def no_training(monkeypatch):
    def refuse(*_args, **_kwargs):
        raise AssertionError("the dense model was trained")

    monkeypatch.setattr(train, "train_dense", refuse)


def _stale(models, data, path):
    """A ``bn_cnn`` trained two epochs, its BatchNorm statistics barely moved (momentum 0.01), saved at ``path``."""
    from autoprune.models import build_model

    torch.manual_seed(0)
    model = build_model(models["bn_cnn"], num_classes=10, in_channels=3)
    TRAIN_DENSE(model, data, train.TrainConfig(epochs=2), progress=False)
    torch.save(model.state_dict(), path)
    return model


def _bn_buffers(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k}


# -- discovery before training ----------------------------------------------------------------------
def test_a_model_torch_pruning_cannot_trace_is_refused_before_any_training(models, small, results, no_training):
    t0 = time.perf_counter()
    with pytest.raises(PlanError) as err:
        train.ensure_dense(models["eval_numpy"], small, 0, progress=False)
    msg = str(err.value)
    assert time.perf_counter() - t0 < 5  # one trace, no training (no_training would have raised)
    assert "\n" not in msg and models["eval_numpy"] in msg and "Torch-Pruning cannot trace" in msg, msg
    assert not (results / "checkpoints").exists()


def test_any_other_error_of_the_discovery_is_one_config_error_line(small, results, no_training, monkeypatch):
    import autoprune.pruning

    def boom(*_args, **_kwargs):
        raise RuntimeError("tracer exploded\n  in a frame nobody needs")

    monkeypatch.setattr(autoprune.pruning, "discover_groups", boom)
    with pytest.raises(ConfigError) as err:
        train.ensure_dense(TINY_REF, small, 0, progress=False)
    msg = str(err.value)
    assert not isinstance(err.value, PlanError)
    assert "\n" not in msg and TINY_REF in msg and "RuntimeError: tracer exploded" in msg and "frame" not in msg, msg


def test_train_cli_refuses_an_untraceable_model_in_one_line_with_exit_2(models, results, no_training, capsys):
    from autoprune.cli import main

    assert main(["train", "--model", models["eval_numpy"], "--no-progress", "--device", "cpu"]) == 2
    out, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err and len(lines) == 1 and not out, err
    assert lines[0].startswith("autoprune train: error: model ") and "Torch-Pruning cannot trace" in lines[0]
    assert not (results / "checkpoints").exists()


# -- BatchNorm statistics re-estimated --------------------------------------------------------------
def test_a_fresh_model_is_cached_with_its_reestimated_batchnorm_statistics(models, small, results, monkeypatch):
    torch.manual_seed(0)  # the model's initial weights
    model, rec = train.ensure_dense(models["bn_cnn"], small, 0, config=train.TrainConfig(epochs=2), progress=False)
    assert rec.bn_reestimated and rec.bn_val_accuracy_before + 0.2 < rec.bn_val_accuracy_after  # ~chance -> learned
    assert rec.val_accuracy == rec.bn_val_accuracy_after and rec.train_seconds > 0
    assert not model.training and {m.momentum for m in train._batchnorms(model)} == {0.01}  # restored
    assert Path(rec.path).parent == results / "checkpoints"
    meta = json.loads(Path(rec.path).with_suffix(".json").read_text())
    assert meta["bn_reestimated"] is True and meta["bn_val_accuracy_after"] == rec.val_accuracy
    monkeypatch.setattr(train, "reestimate_batchnorm", lambda *a, **k: pytest.fail("re-estimated again"))
    again, cached = train.ensure_dense(models["bn_cnn"], small, 0, config=train.TrainConfig(epochs=2), progress=False)
    assert cached == train.DenseCheckpoint(**{**rec.__dict__, "train_seconds": None})  # the cache holds the fixed model
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values()))


def test_train_cli_says_the_statistics_were_reestimated(models, results, capsys):
    from autoprune.cli import main

    argv = ["train", "--model", models["bn_cnn"], "--epochs", "2", "--input-size", "16", "--max-train-samples", "500",
            "--max-eval-samples", "200", "--no-progress", "--device", "cpu"]
    torch.manual_seed(0)
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith("BatchNorm running statistics re-estimated on a few hundred training samples: "
                             "val accuracy "), out
    before, after = (float(v) for v in out[1].rsplit(" ", 3)[1::2])
    assert before < after and f"val accuracy {after:.4f}," in out[0]
    assert out[-1].startswith("checkpoint: ") and not any(ln.startswith("warning:") for ln in out)


def test_a_user_checkpoint_is_reestimated_in_memory_its_file_untouched(models, small, results, tmp_path, no_training):
    path = tmp_path / "stale.pt"
    stale = _stale(models, small, path)
    before = path.read_bytes()
    model, rec = train.ensure_dense(models["bn_cnn"], small, 0, checkpoint=str(path), progress=False)
    assert rec.bn_reestimated and rec.bn_val_accuracy_before < rec.bn_val_accuracy_after == rec.val_accuracy
    assert path.read_bytes() == before and not (results / "checkpoints").exists()
    assert any(not torch.equal(a, b) for a, b in zip(_bn_buffers(model).values(), _bn_buffers(stale).values()))


def test_statistics_that_evaluate_no_better_are_not_kept(models, small, results, tmp_path, monkeypatch):
    path = tmp_path / "stale.pt"
    stale = _stale(models, small, path)

    def spoil(model, *_args, **_kwargs):
        for m in train._batchnorms(model):
            m.running_mean.fill_(1e3)
        return 3

    monkeypatch.setattr(train, "reestimate_batchnorm", spoil)
    model, rec = train.ensure_dense(models["bn_cnn"], small, 0, checkpoint=str(path), progress=False, strict=False)
    assert not rec.bn_reestimated and rec.bn_val_accuracy_after <= rec.bn_val_accuracy_before == rec.val_accuracy
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), stale.state_dict().values()))


def test_an_old_cache_entry_is_read_and_only_one_recorded_at_chance_is_rechecked(models, small, results, no_training):
    """A cache entry from before the re-estimation: its record has no BatchNorm keys (and may have keys this
    version does not know). Recorded above chance, it is taken as recorded; at chance, it is re-estimated
    now and rewritten, so the next load takes it as recorded."""
    path = train.checkpoint_path(models["bn_cnn"], small, 0)
    path.parent.mkdir(parents=True)
    _stale(models, small, path)
    old = {"path": str(path), "model": models["bn_cnn"], "data": small.key, "seed": 0, "val_accuracy": 0.9,
           "test_accuracy": 0.9, "train_seconds": 3.0, "config": {"epochs": 2}, "from_the_future": True}
    path.with_suffix(".json").write_text(json.dumps(old))
    _, rec = train.ensure_dense(models["bn_cnn"], small, 0, progress=False)
    assert (rec.val_accuracy, rec.bn_reestimated, rec.bn_val_accuracy_before) == (0.9, False, None)
    path.with_suffix(".json").write_text(json.dumps({**old, "val_accuracy": 0.1, "test_accuracy": 0.1}))
    _, rec = train.ensure_dense(models["bn_cnn"], small, 0, progress=False)
    assert rec.bn_reestimated and rec.val_accuracy > 0.15 and rec.bn_val_accuracy_before < 0.15
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["bn_reestimated"] and meta["val_accuracy"] == rec.val_accuracy
    assert meta["from_the_future"] and meta["config"] == {"epochs": 2} and meta["train_seconds"] == 3.0  # kept


# -- a dense model at chance ------------------------------------------------------------------------
@pytest.fixture
def at_chance(tmp_path):
    """A ``tiny_cnn`` checkpoint whose classifier is all zeros: every input is class 0, accuracy 1/10."""
    from tests.fixtures.tiny_cnn import tiny_cnn

    model = tiny_cnn()
    torch.nn.init.zeros_(model[-1].weight)
    torch.nn.init.zeros_(model[-1].bias)
    torch.save(model.state_dict(), tmp_path / "zero.pt")
    return tmp_path / "zero.pt"


def test_a_dense_model_at_chance_is_refused_in_one_line_naming_the_fix(small, results, at_chance, no_training):
    with pytest.raises(ConfigError) as err:
        train.ensure_dense(TINY_REF, small, 0, checkpoint=str(at_chance), progress=False)
    msg = str(err.value)
    assert "\n" not in msg and "at chance: val accuracy 0.1000, chance 0.1000 for 10 classes" in msg, msg
    assert "autoprune train --epochs N" in msg and "labels" in msg and "--checkpoint" in msg
    _, rec = train.ensure_dense(TINY_REF, small, 0, checkpoint=str(at_chance), progress=False, strict=False)
    assert rec.val_accuracy == 0.1 and not rec.bn_reestimated  # constant logits: the statistics do not help


def test_train_cli_keeps_a_model_at_chance_with_a_warning(small, results, at_chance, capsys):
    from autoprune.cli import main

    assert main(["train", "--model", TINY_REF, "--checkpoint", str(at_chance), "--input-size", "16",
                 "--max-train-samples", "500", "--max-eval-samples", "200", "--no-progress", "--device", "cpu"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "val accuracy 0.1000, " in out[0] and out[0].endswith("(loaded from --checkpoint)"), out
    assert out[1].startswith(f"warning: the dense model {at_chance} is at chance: ") and "--epochs N" in out[1]
    assert out[2] == f"checkpoint: {at_chance}" and len(out) == 3


def test_search_refuses_a_dense_model_at_chance_before_any_trial(at_chance, results, tmp_path, capsys):
    from autoprune.cli import main

    url = f"sqlite:///{tmp_path / 's.db'}"
    argv = ["search", "--model", TINY_REF, "--target", "jetson-nano", "--checkpoint", str(at_chance), "--trials",
            "1", "--finetune-epochs", "0", "--study", "chance", "--storage", url, "--no-progress", "--device", "cpu",
            "--max-train-samples", "500", "--max-eval-samples", "200"]
    assert main(argv) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("autoprune search: error: ") and "at chance" in err[0], err
    import optuna

    assert "chance" not in optuna.get_all_study_names(url)  # refused before the study was stored
