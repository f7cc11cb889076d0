"""The whole flow for one candidate, top to bottom.

search space → candidate plan → prune → fine-tune/evaluate → export ONNX →
cost model (calibrated by profilers) → objectives.

:class:`Pipeline` is built once per study (dense model, data, prunable groups,
cost model) and :meth:`Pipeline.run` turns one :class:`~autoprune.pruning.PruningPlan`
into a :class:`CandidateResult`. The search (:mod:`autoprune.search.study`) and
the export of a picked point (:mod:`autoprune.deploy.export`) both use it.

Devices: the dense model, pruning surgery, the cost model and the ONNX export stay on the
CPU. Gradient criteria, fine-tuning (with the dense teacher) and evaluation run on the
pipeline's :class:`~autoprune.compute.Compute`; :meth:`Pipeline.run` places the candidate
there after surgery and brings it back before it is exported.

Costs are known before accuracy: the candidate is costed right after surgery (fine-tuning changes no channel
count and no mask), and its validation accuracy is checked at a few fine-tuning checkpoints
(:attr:`Pipeline.checkpoints`), where a stopper (:class:`~autoprune.search.stopping.Stopper`) may stop it.
"""

from __future__ import annotations

import copy
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from autoprune.compute import Compute
from autoprune.costmodel.base import CostEstimate
from autoprune.data import DataSplits
from autoprune.pruning.evaluate import Evaluation
from autoprune.records import ScreenScore, TrialRecord

if TYPE_CHECKING:
    from autoprune.hardware import HardwareProfile

#: Where :meth:`Pipeline.run` checks a candidate's accuracy: after pruning (BatchNorm re-estimated, EagleEye),
#: then half way through its fine-tuning. Four checkpoints (0, 25, 50, 75 %) took 41 % of a 6-step trial's
#: time on VGG-11/digits (benchmarks/search_quality.py --quick), more than the fine-tuning itself.
CHECKPOINTS = (0.0, 0.5)
#: Batches that re-estimate BatchNorm statistics at the checkpoint right after pruning.
CHECK_BN_BATCHES = 4


@dataclass(frozen=True)
class CandidateResult:
    """Everything measured or predicted about one pruned candidate: the stages' own records, not copies.

    ``evaluation`` holds accuracy figures (fractions in [0, 1] on the validation split, or the test split
    at export) and sizes; ``cost`` is *predicted* by the cost model whose provenance it carries;
    ``measured_latency_ms`` is *measured* (on this machine, with ``measured_runtime``) and only set
    where the target is ``local``. ``compute_device`` is where it was fine-tuned and evaluated (the
    search's compute, not the target). ``curve`` is ``(fraction of fine-tuning steps, accuracy)`` at each
    checkpoint, on the evaluated split, ending with ``(1.0, accuracy)``.
    """

    plan: dict[str, Any]
    evaluation: Evaluation
    cost: CostEstimate
    measured_latency_ms: float | None = None
    measured_runtime: str | None = None
    onnx: dict[str, Any] | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    compute_device: str = "cpu"
    curve: tuple[tuple[float, float], ...] = ()

    @property
    def accuracy(self) -> float:
        """Top-1 accuracy on the evaluated split."""
        return self.evaluation.accuracy

    @property
    def latency_ms(self) -> float:
        """Predicted latency on the target."""
        return self.cost.latency_ms

    @property
    def energy_mj(self) -> float:
        """Predicted energy on the target (measured-fit or modelled: see ``cost.provenance.energy``)."""
        return self.cost.energy_mj

    @property
    def per_layer_ms(self) -> tuple[tuple[str, float], ...]:
        """``(module, predicted ms)`` per kernel, rounded to 10 ns."""
        return tuple((str(n), round(float(v), 5)) for n, v in self.cost.per_kernel_ms)

    def trial_record(self) -> TrialRecord:
        """The :class:`~autoprune.records.TrialRecord` a trial stores (one user attribute per field)."""
        ev = self.evaluation
        return TrialRecord(
            plan=self.plan, accuracy=ev.accuracy, precision_macro=ev.precision_macro,
            recall_macro=ev.recall_macro, f1_macro=ev.f1_macro, params=ev.params, macs=ev.macs,
            size_bytes=ev.size_bytes, sparse_size_bytes=ev.sparse_size_bytes, size_mb=ev.sparse_size_bytes / 1e6,
            latency_ms=self.cost.latency_ms, energy_mj=self.cost.energy_mj, latency_band_ms=self.cost.band_ms,
            latency_provenance=asdict(self.cost.provenance), energy_method=self.cost.provenance.energy,
            per_layer_ms=[list(p) for p in self.per_layer_ms], latency_outside_range=self.cost.outside_range,
            measured_latency_ms=self.measured_latency_ms, measured_runtime=self.measured_runtime,
            onnx=self.onnx, seconds=dict(self.seconds), compute_device=self.compute_device,
            curve=[list(p) for p in self.curve],
        )

    def record(self) -> dict[str, Any]:
        """The flat, JSON-ready form of :meth:`trial_record`."""
        return self.trial_record().to_dict()


class Pipeline:
    """Prune, fine-tune, evaluate and score candidates of one dense model on one target.

    Args:
        dense: The trained dense model (never modified).
        data: Data splits; validation for search, test only at export.
        target: The target's loaded hardware profile, or its name (a profile in ``hw_profiles/``,
            loaded here: the pipeline's own entry point).
        model_ref: The model's reference (names the calibration).
        finetune_epochs: Fine-tuning budget per candidate.
        finetune_steps: Optional step budget (overrides epochs).
        lr: Peak fine-tuning learning rate.
        lr_schedule: ``cosine`` or ``one-cycle``.
        batch_size: Fine-tuning batch size.
        kd_temperature, kd_weight: Knowledge-distillation settings when enabled.
        measure: Also measure end-to-end latency with ONNX Runtime here (``local`` target).
        seed: Seed for fine-tuning.
        space: The study's search space: its structures, N:M patterns, largest ratio,
            ``min_channels`` and ``round_to`` are what the groups are checked for.
        max_ratio: The largest ratio the groups are test-pruned at (default: the space's
            largest, else 0.95).
        compute: Where criteria, fine-tuning and evaluation run (default: the CPU).
        checkpoints: Fractions of the fine-tuning steps at which :meth:`run` checks the accuracy
            (0: right after pruning, with BatchNorm statistics re-estimated, as EagleEye does).
        base_profile: The profile ``target``'s calibration is derived from, where the caller has it loaded.

    Attributes:
        groups: The prunable groups, as checked by :func:`~autoprune.pruning.check_groups`
            (a group that failed its test prune lost the structures that failed).
        excluded_groups: Group name → one line: which structures it lost and why.
    """

    def __init__(self, dense: nn.Module, data: DataSplits, target: str | HardwareProfile, model_ref: str, *,
                 finetune_epochs: int = 2, finetune_steps: int | None = None, lr: float = 0.02,
                 lr_schedule: str = "cosine", batch_size: int = 64, kd_temperature: float = 4.0,
                 kd_weight: float = 0.7, measure: bool | None = None, seed: int = 0,
                 space: Any = None, max_ratio: float | None = None, compute: Compute | None = None,
                 checkpoints: tuple[float, ...] = CHECKPOINTS, base_profile: HardwareProfile | None = None) -> None:
        from autoprune.costmodel import calibration_name, load_cost_model, profile_command
        from autoprune.data import natural_input_size
        from autoprune.hardware import load_profile
        from autoprune.pruning import check_groups, discover_groups
        from autoprune.pruning.check import check_options

        profile = load_profile(target) if isinstance(target, str) else target

        self.dense = dense.eval()
        self.compute = compute or Compute()
        self._teacher: nn.Module | None = None
        self._scores: dict = {}  # the dense model's channel scores, per criterion and group (prune_model)
        self.data, self.profile, self.target, self.model_ref = data, profile, profile.name, model_ref
        self.example = data.example_input(1)
        # Discovered, then test-pruned once: what cannot be pruned safely is kept whole; no export, refused.
        check = check_groups(self.dense, self.example, discover_groups(self.dense, self.example),
                             **check_options(space, max_ratio))
        check.refuse_unexportable(self.dense, tuple(data.input_shape))
        self.groups = list(check.groups)
        self.excluded_groups: dict[str, str] = dict(check.excluded)
        self.finetune_epochs = finetune_epochs
        self.finetune_steps = finetune_steps
        self.lr = lr
        self.lr_schedule = lr_schedule
        self.batch_size = batch_size
        self.kd_temperature = kd_temperature
        self.kd_weight = kd_weight
        self.seed = seed
        self.checkpoints = tuple(checkpoints)
        self.measure = (profile.here == "cpu") if measure is None else measure
        size = int(data.input_shape[-1])
        fix = profile_command(profile.name, model_ref, data=data.name,
                              input_size=None if size == natural_input_size(model_ref, data.name) else size)
        self.cost_model = load_cost_model(profile, self.dense, tuple(data.input_shape),
                                          model_name=calibration_name(model_ref), fix=f"run `{fix}`",
                                          base_profile=base_profile)

    def reseeded(self, seed: int) -> Pipeline:
        """This pipeline with another fine-tuning seed: a shallow copy sharing the dense model, data,
        groups and cost model (nothing is rebuilt; ``self`` is unchanged)."""
        other = copy.copy(self)
        other.seed = int(seed)
        other._scores = {}  # other calibration batches: other scores
        return other

    # -- stages ----------------------------------------------------------------------------------
    def prune(self, plan):
        """Stage 1: apply ``plan``, fitted to the checked groups, to a copy of the dense model.

        The plan is first snapped (:func:`~autoprune.pruning.snap_plan`); the returned
        :class:`~autoprune.pruning.PrunedModel`'s ``plan`` is the snapped one.
        """
        from autoprune.pruning import prune_model, snap_plan

        plan = snap_plan(plan, self.groups)
        plan.validate(self.groups)
        calib = self.data.loader("train", self.batch_size, seed=self.seed, pin_memory=self.compute.pin_memory)
        steps_total = max(1, plan.settings.iterative_steps) if plan.settings.schedule == "iterative" else 1
        between = None
        if steps_total > 1:
            def between(model: nn.Module, step: int) -> None:  # surgery is on the CPU, fine-tuning on the device
                self.compute.place(model)
                try:
                    self._finetune(model, plan, epochs_scale=1.0 / steps_total, kd=False)
                finally:
                    self.compute.to_cpu(model)
        return prune_model(self.dense, plan, self.example, calib_loader=calib, finetune_fn=between,
                           compute=self.compute, score_cache=self._scores)

    def teacher(self) -> nn.Module:
        """The dense model on the compute device, for distillation (a copy made once; ``dense`` stays on the CPU)."""
        if self._teacher is None:
            self._teacher = self.compute.copy(self.dense).eval()
        return self._teacher

    def full_steps(self, epochs: int | None = None, scale: float = 1.0) -> int:
        """Optimiser steps of one candidate's full fine-tune: the study's step budget, else ``scale`` of
        ``epochs`` (default: the study's) over the training split."""
        if self.finetune_steps is not None:
            return self.finetune_steps
        ep = self.finetune_epochs if epochs is None else epochs
        return max(1, round(ep * scale * len(self.data.loader("train", self.batch_size))))

    def _finetune(self, model: nn.Module, plan, *, epochs_scale: float = 1.0, kd: bool = False,
                  epochs: int | None = None, on_checkpoint=None, steps: int | None = None):
        from autoprune.pruning import FinetuneConfig, finetune

        steps = steps if steps is not None else self.full_steps(epochs, epochs_scale)
        cfg = FinetuneConfig(
            steps=steps, lr=self.lr, lr_schedule=self.lr_schedule,
            kd_temperature=self.kd_temperature, kd_weight=self.kd_weight if kd else 0.0,
            regularization=plan.settings.regularization, reg_strength=plan.settings.reg_strength,
            seed=self.seed, checkpoints=self.checkpoints if on_checkpoint is not None else (),
        )
        return finetune(model, self.data.loader("train", self.batch_size, seed=self.seed,
                                                pin_memory=self.compute.pin_memory), cfg,
                        teacher=self.teacher() if kd else None, compute=self.compute, on_checkpoint=on_checkpoint)

    def _measure(self, path: Path) -> tuple[float | None, str]:
        """Measure the exported candidate here; a busy machine gives no figure rather than a failed trial.

        The search's latency objective is the cost model's prediction; this measurement
        is the check beside it, so a batch too noisy to trust is dropped (and said so).
        """
        from autoprune.errors import NoisyMeasurementError
        from autoprune.profiling.base import threads_of

        try:
            m = measure_onnx_local(path, tuple(self.example.shape),  # the calibration's threads: like for like
                                   threads=threads_of(self.cost_model.provenance.runtime))
        except NoisyMeasurementError as exc:
            return None, f"not measured: {exc}"
        return m.latency_ms, f"{m.runtime} on {m.device}"

    def run(self, plan, *, kd: bool = False, split: str = "val", epochs: int | None = None,
            onnx_path: str | Path | None = None, stopper=None) -> CandidateResult:
        """Run the whole flow for one plan and return its result.

        Args:
            plan: The candidate's pruning plan; it is snapped to the checked groups first,
                and the result records the snapped plan.
            kd: Distil from the dense teacher during fine-tuning.
            split: ``val`` during search; ``test`` at export.
            epochs: Fine-tuning epochs (defaults to the study's budget).
            onnx_path: Where to keep the exported ONNX (a temporary file otherwise).
            stopper: Asked at each fine-tuning checkpoint, as ``stopper.check(curve, costs)`` with the
                curve so far and the costs predicted before fine-tuning (``latency_ms``, ``energy_mj``,
                ``size_mb``, ``macs``): a :class:`~autoprune.search.stopping.Stopper`.

        Raises:
            autoprune.errors.AutopruneError: A bad plan, a diverging fine-tune or a failed export.
            autoprune.search.stopping.TrialStopped: The stopper stopped the candidate.
        """
        from autoprune.pruning import evaluate, export_onnx, recalibrate_bn
        from autoprune.train import accuracy

        t: dict[str, float] = {}
        t0 = time.perf_counter()
        pruned = self.prune(plan)
        plan = pruned.plan  # the snapped plan: what was actually pruned
        t["prune_s"] = time.perf_counter() - t0
        is_dense = all(gp.structure == "keep" for _, gp in plan.groups) and plan.settings.allocation == "local"
        t0 = time.perf_counter()
        # Fine-tuning changes no channel count and no mask: the masked module (weight = orig * mask, what
        # make_permanent bakes in) already has the final shape and zeros, so it is costed once, here.
        cost = self.cost_model.predict(pruned.module)
        costs = self._costs(pruned, cost) if stopper is not None else {}
        t["cost_model_s"] = time.perf_counter() - t0
        eval_loader = self.data.loader(split, 256, pin_memory=self.compute.pin_memory)
        bn_loader = self.data.loader("train", self.batch_size, seed=self.seed, pin_memory=self.compute.pin_memory)
        curve: list[tuple[float, float]] = []
        t_check = [0.0]

        def checkpoint(fraction: float) -> None:
            c0 = time.perf_counter()
            with _side_effect_free(pruned.module, self.compute, bn_loader):
                if fraction == 0.0:  # after surgery the running statistics are stale; later, training updates them
                    recalibrate_bn(pruned.module, bn_loader, CHECK_BN_BATCHES, self.compute)
                acc = accuracy(pruned.module, eval_loader, self.compute)  # top-1 only, no extra metrics
            curve.append((fraction, acc))
            t_check[0] += time.perf_counter() - c0
            if stopper is not None:
                stopper.check(tuple(curve), costs)

        t0 = time.perf_counter()
        self.compute.place(pruned.module)  # surgery is done: fine-tune and evaluate on the device
        try:
            if not is_dense:
                self._finetune(pruned.module, plan, kd=kd, epochs=epochs,
                               on_checkpoint=checkpoint if self.checkpoints and split == "val" else None)
            t["finetune_s"] = time.perf_counter() - t0 - t_check[0]
            t["checkpoints_s"] = t_check[0]
            t0 = time.perf_counter()
            module = pruned.make_permanent()
            ev = evaluate(module, eval_loader, self.example, compute=self.compute)
        finally:
            module = self.compute.to_cpu(pruned.module)  # the exporter reads CPU models
        t["evaluate_s"] = time.perf_counter() - t0
        measured = runtime = onnx = None
        if self.measure or onnx_path is not None:
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(onnx_path) if onnx_path is not None else Path(tmp) / "candidate.onnx"
                exp = export_onnx(copy.deepcopy(module), path, self.example)
                onnx = {"path": str(path) if onnx_path is not None else None, "file_bytes": exp.file_bytes,
                        "opset": exp.opset, "max_abs_diff": exp.max_abs_diff, "atol": exp.atol}
                if self.measure:
                    measured, runtime = self._measure(path)
            t["export_measure_s"] = time.perf_counter() - t0
        return CandidateResult(
            plan=plan.to_dict(), evaluation=ev, cost=cost, measured_latency_ms=measured, measured_runtime=runtime,
            onnx=onnx, seconds={k: round(v, 3) for k, v in t.items()}, compute_device=str(self.compute.device),
            curve=(*curve, (1.0, ev.accuracy)),
        )

    def screen(self, plan, *, steps: int = 0, kd: bool = False, samples: int | None = None,
               bn_batches: int = CHECK_BN_BATCHES) -> ScreenScore:
        """Score ``plan`` cheaply: prune, re-estimate BatchNorm (EagleEye) or fine-tune ``steps`` steps,
        evaluate on the first ``samples`` validation samples; the latency is the cost model's, known
        before any training. Nothing is exported or measured.

        Raises:
            autoprune.errors.AutopruneError: A bad plan (as :meth:`run`).
        """
        from autoprune.pruning import recalibrate_bn
        from autoprune.pruning.evaluate import top1_upto

        t0 = time.perf_counter()
        pruned = self.prune(plan)
        costs = self._costs(pruned, self.cost_model.predict(pruned.module))
        bn_loader = self.data.loader("train", self.batch_size, seed=self.seed, pin_memory=self.compute.pin_memory)
        self.compute.place(pruned.module)
        try:
            if steps > 0:
                self._finetune(pruned.module, pruned.plan, kd=kd, steps=steps)
            else:
                recalibrate_bn(pruned.module, bn_loader, bn_batches, self.compute)
            acc, n = top1_upto(pruned.module, self.data.loader("val", 256, pin_memory=self.compute.pin_memory),
                                    samples, self.compute)
        finally:
            self.compute.to_cpu(pruned.module)
        return ScreenScore(plan=pruned.plan.to_dict(), accuracy=acc, samples=n, steps=int(steps),
                           seconds=round(time.perf_counter() - t0, 4), **costs)

    def _costs(self, pruned, cost: CostEstimate) -> dict[str, float]:
        """What a candidate costs before it is fine-tuned, by record attribute (the stopper's comparison).

        Latency, energy and MACs depend on the shape and the masks only; the size counts exact zeros, so a
        weight that fine-tuning moves off zero (never a masked one) can add a few bytes.
        """
        from autoprune.pruning.evaluate import count_macs, size_report

        _, _, sparse_bytes = size_report(pruned.module, pruned.nm_members)
        return dict(latency_ms=cost.latency_ms, energy_mj=cost.energy_mj, size_mb=sparse_bytes / 1e6,
                    macs=float(count_macs(pruned.module, self.example)))  # keyed by TrialRecord's field names


@contextmanager
def _side_effect_free(module: nn.Module, compute: Compute, loader: Any) -> Iterator[None]:
    """Leave fine-tuning as if a checkpoint never ran: BatchNorm statistics, random state and the data
    order of ``loader`` (a user's loader may be the training loader itself) are restored afterwards."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [{k: b.clone() for k, b in m.named_buffers(recurse=False)} for m in bns]
    gen = getattr(loader, "generator", None)
    gen_state = gen.get_state() if gen is not None else None
    devices = [compute.device] if compute.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        with torch.no_grad():
            for m, buffers in zip(bns, saved):
                for k, b in buffers.items():
                    getattr(m, k).copy_(b)
        if gen_state is not None:
            gen.set_state(gen_state)


def measure_onnx_local(path: str | Path, input_shape: tuple[int, ...], threads: int | None = None):
    """Measure an ONNX file end to end on this machine with ONNX Runtime (the profiling protocol)."""
    from autoprune.profiling import get_runtime

    runtime = get_runtime("onnxruntime", threads=threads or max(1, torch.get_num_threads()))
    return runtime.measure(str(path), input_shape)


__all__ = ["CandidateResult", "Pipeline", "measure_onnx_local"]
