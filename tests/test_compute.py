"""``--device``: resolution, the bad-device lines, a device spy through every stage that touches tensors,
checkpoints across map locations, a study that moves between machines, and Ray's per-trial resources.

No GPU is needed: :class:`SpyCompute` stands in for an accelerator. "On the device" is float64 and "on the
CPU" float32, so a tensor or module that missed a move meets the other precision inside a conv or linear
layer and raises, as a CUDA tensor meeting a CPU one does; forward hooks record which one each stage ran in.
"""

from __future__ import annotations

import io
import json
import zipfile

import optuna
import pytest
import torch
from torch import nn

import autoprune.compute as compute_mod
import autoprune.pruning as pruning_pkg
from autoprune.cli import main
from autoprune.compute import Compute, resolve_device
from autoprune.errors import ConfigError
from tests.conftest import TINY_REF

DEV, HOST = torch.float64, torch.float32


class SpyCompute(Compute):
    """A stand-in accelerator for CPU-only machines (see the module docstring)."""

    @property
    def moves(self) -> bool:
        return True

    def place(self, module):
        return module.to(DEV)

    def to_cpu(self, module):
        return module.to(HOST)

    def tensor(self, t):
        return t.to(DEV) if t.is_floating_point() else t

    def cpu_tensors(self, tensors):
        return {k: v.to(HOST) for k, v in tensors.items()}


class Recorder:
    """Forward pre-hooks on conv/linear layers: ``(stage, input dtype, weight dtype)`` per call.

    The stage is set by :meth:`tag`, which wraps a function so that calls inside it are labelled.
    Hooks travel with deep copies, so working copies, the teacher and the pruned candidate report too.
    """

    def __init__(self) -> None:
        self.stage = "other"
        self.calls: list[tuple[str, torch.dtype, torch.dtype]] = []

    def hook(self, model: nn.Module) -> nn.Module:
        def record(module, inputs):  # a function, which deepcopy shares (a bound method would copy the recorder)
            self._record(module, inputs)

        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.register_forward_pre_hook(record)
        return model

    def _record(self, module, inputs):
        w = module.weight_orig if hasattr(module, "weight_orig") else module.weight
        self.calls.append((self.stage, inputs[0].dtype, w.dtype))

    def tag(self, stage: str, fn):
        def wrapper(*args, **kwargs):
            before, self.stage = self.stage, stage
            try:
                return fn(*args, **kwargs)
            finally:
                self.stage = before

        return wrapper

    def dtypes(self, stage: str) -> set[torch.dtype]:
        return {d for s, x, w in self.calls if s == stage for d in (x, w)}


def tiny(seed: int = 0) -> nn.Module:
    from tests.fixtures.tiny_cnn import tiny_cnn

    torch.manual_seed(seed)
    return tiny_cnn()


@pytest.fixture(scope="module")
def data16():
    from autoprune.data import load_digits

    return load_digits(size=16)


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(compute_mod, "_cuda_count", lambda: 0)
    monkeypatch.setattr(compute_mod, "_mps_available", lambda: False)


@pytest.fixture
def one_gpu(monkeypatch):
    """This machine as seen by device resolution only: one CUDA GPU (no tensor goes there)."""
    monkeypatch.setattr(compute_mod, "_cuda_count", lambda: 1)
    monkeypatch.setattr(compute_mod, "_mps_available", lambda: False)


# -- resolution ----------------------------------------------------------------------------------
def test_auto_is_the_cpu_here_and_no_autocast_there():
    if torch.cuda.is_available() or torch.backends.mps.is_available():
        pytest.skip("this machine has an accelerator")
    assert resolve_device("auto") == resolve_device(None) == torch.device("cpu")
    c = Compute.resolve("auto", amp=True)
    assert c.device == torch.device("cpu") and not c.amp and not c.moves and not c.pin_memory
    assert not c.grad_scaler().is_enabled()
    assert compute_mod.available_devices() == ("cpu",)


def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(compute_mod, "_cuda_count", lambda: 2)
    monkeypatch.setattr(compute_mod, "_mps_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda") == torch.device("cuda", 0) and resolve_device("CUDA:1") == torch.device("cuda", 1)
    monkeypatch.setattr(compute_mod, "_cuda_count", lambda: 0)
    assert resolve_device("auto") == torch.device("mps") == resolve_device("mps")
    assert not Compute.resolve("mps").amp  # autocast is a CUDA default only
    monkeypatch.setattr(compute_mod, "_mps_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")


@pytest.mark.parametrize("text, gpus, needle", [
    ("cuda", 0, "--device cuda: "),
    ("cuda:0", 0, "this machine has: cpu"),
    ("cuda:3", 1, "this machine has 1 CUDA GPU (cuda:0)"),
    ("cuda:x", 1, "cuda or cuda:N"),
    ("mps", 1, "MPS"),
    ("tpu", 0, "valid: auto, cpu, cuda, cuda:N, mps"),
])
def test_bad_devices_name_what_this_machine_has(monkeypatch, text, gpus, needle):
    monkeypatch.setattr(compute_mod, "_cuda_count", lambda: gpus)
    monkeypatch.setattr(compute_mod, "_mps_available", lambda: False)
    with pytest.raises(ConfigError) as exc:
        resolve_device(text)
    msg = str(exc.value)
    assert needle in msg and "this machine has" in msg and "\n" not in msg


@pytest.mark.parametrize("argv", [
    ["train", "--model", TINY_REF, "--device", "cuda"],
    ["search", "--model", TINY_REF, "--target", "jetson-nano", "--trials", "1", "--device", "cuda:3"],
    ["export", "--study", "nothing-here", "--trial", "0", "--device", "mps"],
    ["verify", "no-such-export", "--device", "cuda:0"],
])
def test_bad_device_is_one_line_and_exit_2_on_every_command(argv, tmp_path, monkeypatch, capsys, no_gpu):
    monkeypatch.setenv("AUTOPRUNE_RESULTS", str(tmp_path))
    db = tmp_path / "s.db"
    extra = ["--storage", f"sqlite:///{db}"] if argv[0] in ("search", "export") else []
    assert main([*argv, *extra]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "--device" in err[0] and "this machine has: cpu" in err[0], err
    assert not db.exists() and not (tmp_path / "checkpoints").exists()  # nothing trained, nothing stored


# -- the device spy: every stage that touches tensors ----------------------------------------------
def test_spy_dense_training_and_its_evaluation_run_on_the_device(data16, tmp_path, monkeypatch):
    import autoprune.train as train
    from autoprune.models import load_checkpoint

    monkeypatch.setenv("AUTOPRUNE_RESULTS", str(tmp_path))
    rec = Recorder()
    built = []
    real_build = train.build_model
    monkeypatch.setattr(train, "build_model", lambda *a, **k: built.append(rec.hook(real_build(*a, **k))) or built[-1])
    monkeypatch.setattr(train, "train_dense", rec.tag("train", train.train_dense))
    monkeypatch.setattr(train, "accuracy", rec.tag("evaluate", train.accuracy))
    model, ck = train.ensure_dense(TINY_REF, data16, 0, config=train.TrainConfig(epochs=1, batch_size=128),
                                   progress=False, compute=SpyCompute())
    assert rec.dtypes("train") == {DEV} and rec.dtypes("evaluate") == {DEV}
    assert rec.dtypes("other") <= {HOST}  # the shape check before training is CPU work
    assert {p.dtype for p in model.state_dict().values() if p.is_floating_point()} == {HOST}  # back on the CPU
    assert 0.0 <= ck.val_accuracy <= 1.0 and ck.train_seconds > 0
    assert json.loads(train.checkpoint_path(TINY_REF, data16, 0).with_suffix(".json").read_text())["trained_on"]
    fresh = load_checkpoint(tiny(1), ck.path)  # the file holds CPU tensors, equal to the returned model's
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))


@pytest.mark.parametrize("name", ["taylor", "snip", "obd", "lrp"])
def test_spy_gradient_criteria_run_on_the_device_and_bring_statistics_back(name, data16, monkeypatch):
    from autoprune.pruning import get_criterion

    loader = data16.loader("train", 32)
    batches = [b for _, b in zip(range(2), loader)]
    model = tiny()
    reference = get_criterion(name)
    reference.prepare(model, batches)  # the CPU, as before devices
    rec = Recorder()
    rec.hook(model)
    crit = get_criterion(name)
    crit.compute = SpyCompute()
    monkeypatch.setattr(type(crit), "prepare", rec.tag("criteria", type(crit).prepare))
    crit.prepare(model, batches)
    assert rec.dtypes("criteria") == {DEV}
    assert all(p.dtype == HOST and p.grad is None for p in model.parameters())  # the model itself never moved
    assert reference._stats.keys() == crit._stats.keys() and crit._stats
    for key, ref in reference._stats.items():
        assert crit._stats[key].dtype == HOST
        torch.testing.assert_close(crit._stats[key], ref, rtol=1e-3, atol=1e-7)


def test_spy_pipeline_prunes_on_the_cpu_and_finetunes_distils_and_evaluates_on_the_device(data16, monkeypatch):
    from autoprune.pipeline import Pipeline
    from autoprune.pruning import PlanSettings, PruningPlan
    from autoprune.pruning.criteria import gradient as gradient_criteria

    rec = Recorder()
    dense = rec.hook(tiny())
    pipe = Pipeline(dense, data16, "jetson-nano", TINY_REF, finetune_steps=2, batch_size=32, kd_weight=0.5,
                    compute=SpyCompute())
    for fn in ("finetune", "evaluate"):
        monkeypatch.setattr(pruning_pkg, fn, rec.tag(fn, getattr(pruning_pkg, fn)))
    monkeypatch.setattr(gradient_criteria.Taylor, "prepare", rec.tag("criteria", gradient_criteria.Taylor.prepare))
    rec.calls.clear()
    plan = PruningPlan.uniform(pipe.groups, "channel", 0.4, criterion="taylor",
                               settings=PlanSettings(schedule="iterative", iterative_steps=2))
    pruned = pipe.prune(plan)  # step 1, fine-tune between steps on the device, step 2: back on the CPU
    assert all(p.dtype == HOST for p in pruned.module.parameters())
    assert rec.dtypes("criteria") == {DEV} and rec.dtypes("finetune") == {DEV}
    rec.calls.clear()
    result = pipe.run(plan, kd=True)
    for stage in ("criteria", "finetune", "evaluate"):
        assert rec.dtypes(stage) == {DEV}, stage
    assert rec.dtypes("other") <= {HOST}  # surgery tracing, the cost model: CPU work
    assert all(p.dtype == HOST for p in dense.parameters())  # the dense model never left the CPU
    assert all(p.dtype == DEV for p in pipe.teacher().parameters())  # its distillation copy lives on the device
    assert result.record()["compute_device"] == "cpu" and 0.0 <= result.accuracy <= 1.0
    assert result.evaluation.params < sum(p.numel() for p in dense.parameters())


def test_a_cpu_run_is_unchanged_by_an_explicit_cpu_device(data16):
    """``--device cpu`` (and ``auto`` here) adds no move, no autocast: bit-identical fine-tuning."""
    from autoprune.pruning import FinetuneConfig, finetune

    outs = []
    for compute in (None, Compute.resolve("cpu")):
        model = tiny()
        finetune(model, data16.loader("train", 32), FinetuneConfig(steps=3, kd_weight=0.0), compute=compute)
        outs.append(model(data16.example_input(4)))
    assert torch.equal(outs[0], outs[1])


# -- checkpoints across map locations --------------------------------------------------------------
def _as_if_saved_on_cuda(src, dst) -> None:
    """Rewrite a ``torch.save`` zip so that its tensors say ``cuda:0``, as a GPU-trained checkpoint does."""
    zin = zipfile.ZipFile(io.BytesIO(src.read_bytes()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zout:
        for name in zin.namelist():
            raw = zin.read(name)
            if name.endswith("data.pkl"):
                assert b"X\x03\x00\x00\x00cpu" in raw
                raw = raw.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")
            zout.writestr(name, raw)
    dst.write_bytes(out.getvalue())


def test_a_gpu_trained_checkpoint_is_found_and_loaded_by_a_cpu_rerun(data16, tmp_path, monkeypatch, no_gpu):
    import autoprune.train as train

    monkeypatch.setenv("AUTOPRUNE_RESULTS", str(tmp_path))
    trained = tiny(7)
    path = train.checkpoint_path(TINY_REF, data16, 0)  # the key names no device
    path.parent.mkdir(parents=True)
    plain = tmp_path / "plain.pt"
    torch.save(trained.state_dict(), plain)
    _as_if_saved_on_cuda(plain, path)
    with pytest.raises(RuntimeError, match="CUDA"):
        torch.load(path, weights_only=True)  # without a map location it needs a GPU
    path.with_suffix(".json").write_text(json.dumps({
        "path": str(path), "model": TINY_REF, "data": data16.key, "seed": 0, "val_accuracy": 0.5,
        "test_accuracy": 0.5, "train_seconds": 3.0, "trained_on": "cuda:0 (NVIDIA H100, bf16 autocast)"}))
    model, ck = train.ensure_dense(TINY_REF, data16, 0, progress=False, compute=Compute.resolve("auto"))
    assert ck.train_seconds is None and ck.trained_on.startswith("cuda:0")  # loaded, not retrained
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), trained.state_dict().values()))


# -- a study moves between machines ---------------------------------------------------------------
def test_search_stores_the_device_and_a_resume_chooses_it_again(tiny_dense, results_root, tmp_path, capsys):
    from autoprune.search.config import CONFIG_ATTR, SearchConfig
    from autoprune.search.study import open_study

    url = f"sqlite:///{tmp_path / 'd.db'}"
    args = ["search", "--model", TINY_REF, "--target", "jetson-nano", "--finetune-epochs", "0", "--trials", "1",
            "--no-progress", "--storage", url]
    assert main([*args, "--study", "here", "--device", "cpu"]) == 0
    study = optuna.load_study(study_name="here", storage=url)
    assert study.user_attrs[CONFIG_ATTR]["device"] == "cpu"
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert done and {t.user_attrs["compute_device"] for t in done} == {"cpu"}

    # a study made on a machine with two GPUs, resumed here: not a conflict, and the device is chosen again
    config = SearchConfig(model=TINY_REF, target="jetson-nano", finetune_epochs=0, trials=1, device="cuda:1")
    open_study(url, "moved", config, {}, None)
    assert SearchConfig.from_dict(config.to_dict()).conflicts({"device": "cpu", "amp": False, "seed": 0}) == []
    assert main(["search", "--study", "moved", "--storage", url, "--no-progress"]) == 0
    study = optuna.load_study(study_name="moved", storage=url)
    assert study.user_attrs[CONFIG_ATTR]["device"] == "auto"
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert done and {t.user_attrs["compute_device"] for t in done} == {"cpu"}


# -- Ray: per-trial resources ---------------------------------------------------------------------
def test_trial_resources_choose_the_workers_device_and_refuse_contradictions(no_gpu, monkeypatch):
    from autoprune.search.backends.resources import trial_resources

    r = trial_resources("auto", None, 1.0, None)
    assert (r.cpus, r.gpus, r.device, r.threads) == (1.0, 0.0, "cpu", 1)
    with pytest.raises(ConfigError, match="local Ray has 0 CUDA GPU"):
        trial_resources("auto", 1, 1.0, None)
    assert trial_resources("auto", 2, 1.5, "10.0.0.1:6379").device == "cuda"  # a cluster's GPUs, not ours
    monkeypatch.setattr(compute_mod, "_cuda_count", lambda: 1)
    assert trial_resources("auto", None).ray() == {"cpu": 1.0, "gpu": 1.0}  # a CUDA driver: one GPU a trial
    assert trial_resources("cuda", 0.25, 1.0).device == "cuda"
    for device, gpus, cpus, needle in [("auto", 1.5, 1.0, "fraction of one GPU"), ("auto", 2, 1.0, "1 CUDA GPU"),
                                       ("cpu", 1, 1.0, "--device cpu with --gpus-per-trial"),
                                       ("cuda", 0, 1.0, "--gpus-per-trial 0"), ("auto", 0, 10_000, "CPUs")]:
        with pytest.raises(ConfigError, match=needle):
            trial_resources(device, gpus, cpus, None)


def test_ray_resource_arguments_reach_tunes_trial_resources(tmp_path, monkeypatch, capsys):
    pytest.importorskip("ray.tune")
    import autoprune.search.backends as backends
    from autoprune.errors import AutopruneError
    from autoprune.search.backends import ray as rb
    from autoprune.search.backends.resources import with_trial_resources
    from autoprune.search.config import SearchConfig
    from autoprune.search.study import open_study

    made = []

    class StopError(AutopruneError):
        pass

    def capture(name, **options):
        made.append(real(name, **options))
        raise StopError("stopped after the backend was made")

    real = backends.get_backend
    monkeypatch.setattr(backends, "get_backend", capture)
    url = f"sqlite:///{tmp_path / 'r.db'}"
    assert main(["search", "--model", TINY_REF, "--target", "jetson-nano", "--trials", "1", "--storage", url,
                 "--backend", "ray", "--address", "10.0.0.1:6379", "--gpus-per-trial", "0.5",
                 "--cpus-per-trial", "2"]) == 2
    assert "stopped after the backend was made" in capsys.readouterr().err
    backend = made[0]
    assert isinstance(backend, rb.RayBackend) and backend.address == "10.0.0.1:6379"
    trainable = with_trial_resources(lambda config: None, backend.resources)
    assert trainable._resources.required_resources == {"CPU": 2.0, "GPU": 0.5}
    study, config, _ = open_study(url, "spec", SearchConfig(model=TINY_REF, target="jetson-nano"), {}, None)
    spec = rb.worker_spec(study, config, backend.resources)
    assert spec["threads"] == 2 and SearchConfig.from_dict(spec["config"]).device == "cuda"  # Ray's GPU

    assert main(["search", "--model", TINY_REF, "--trials", "1", "--storage", url, "--gpus-per-trial", "1"]) == 2
    assert "add --backend ray" in capsys.readouterr().err
