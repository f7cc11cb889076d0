"""`autoprune pareto --measure`: the front of a `local` study timed here, each point against the dense model,
stored on the study and shown by a later plain `pareto`; a study on another target is refused in one line."""

from __future__ import annotations

import pytest

from autoprune.cli import main
from tests.conftest import TINY_REF

FAST = ["--model", TINY_REF, "--finetune-epochs", "0", "--no-progress", "--trials", "3"]
KEYS = {"pruned_ms", "dense_ms", "speedup", "runtime", "threads", "host", "measured_at", "predicted_ms",
        "error_pct", "reanchored_error_pct"}


def _search(results_root, target: str, name: str) -> str:
    url = f"sqlite:///{results_root / (name + '.db')}"
    assert main(["search", *FAST, "--target", target, "--study", name, "--storage", url]) == 0
    return url


@pytest.fixture(scope="module")
def local_study(tiny_dense, results_root):
    """A coarse measured `local` calibration of the tiny CNN (4 plans, 2 grid points), then a 3-trial study."""
    import torch

    from autoprune.costmodel.builder import CalibrationOptions, calibrate
    from autoprune.costmodel.calibration import calibration_path, save_calibration

    torch.manual_seed(0)
    res = calibrate("tiny_cnn", CalibrationOptions(plans=4, grid=(0.5, 1.0), input_size_px=32), model=tiny_dense[0])
    save_calibration(res.model, calibration_path("local", TINY_REF, 32), model_name="tiny_cnn",
                     input_shape=(3, 32, 32), runtime=res.runtime, status="measured", error=res.error)
    return _search(results_root, "local", "front-measure")


@pytest.mark.slow
def test_measure_times_every_front_point_and_a_plain_pareto_shows_the_stored_figures(local_study, capsys):
    import optuna

    from autoprune.search.report import stored_front_measured

    capsys.readouterr()
    assert main(["pareto", "--study", "front-measure", "--storage", local_study, "--measure"]) == 0
    printed = capsys.readouterr().out
    study = optuna.load_study(study_name="front-measure", storage=local_study)
    stored = stored_front_measured(study)
    front = [int(line.split()[0]) for line in printed.split("-" * 20)[-1].splitlines()[1:]
             if line.strip()[:1].isdigit()]
    assert front and set(front) == set(stored), (front, sorted(stored))
    for number in front:
        m = stored[number]
        assert set(m) >= KEYS, sorted(m)
        assert m["pruned_ms"] > 0 and m["dense_ms"] > 0 and m["speedup"] > 0
        assert m["runtime"].startswith("onnxruntime") and m["threads"] >= 1 and m["measured_at"].endswith("+00:00")
        assert f"trial {number:>4}: predicted {m['predicted_ms']:.3f} ms, measured now {m['pruned_ms']:.3f} ms" \
            in printed
        assert f"dense now {m['dense_ms']:.3f} ms" in printed
    assert "now ms" in printed
    # a plain `pareto` shows the stored figures, not new ones
    assert main(["pareto", "--study", "front-measure", "--storage", local_study]) == 0
    again = capsys.readouterr().out
    assert "measured now" not in again and "now ms" in again
    rows = {int(line.split()[0]): line for line in again.splitlines() if line.strip()[:1].isdigit()
            and len(line.split()) > 10}
    for number in front:
        assert f"{stored[number]['pruned_ms']:.3f}" in rows[number]
    assert stored_front_measured(optuna.load_study(study_name="front-measure", storage=local_study)) == stored
    # each trial of a real search stores its prediction's band, from the measured calibration
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    assert all(trials[n].user_attrs.get("latency_band_ms", 0) > 0 for n in front)


def test_measure_on_another_target_is_refused_in_one_line(tiny_dense, results_root, capsys):
    url = _search(results_root, "jetson-nano", "front-measure-nano")
    capsys.readouterr()
    assert main(["pareto", "--study", "front-measure-nano", "--storage", url, "--measure"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1, err
    assert "--measure times the front here" in err and "jetson-nano" in err and "not this machine" in err
    assert "autoprune export --study front-measure-nano" in err
    assert "measured now" not in captured.out
