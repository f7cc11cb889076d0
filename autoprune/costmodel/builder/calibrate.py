"""Measured calibration: what ``autoprune profile`` does.

1. **Kernels in isolation**: every distinct kernel configuration of the model is
   rebuilt as a single-kernel ONNX graph (:mod:`~autoprune.costmodel.builder.microbench`)
   over a grid of kept ``(cin, cout)`` counts and timed with the target's runtime
   and the shared protocol; the runtime's empty-call overhead (measured on a
   trivial graph) is subtracted from each.
2. **Whole models**: the dense model, three uniform plans and ``plans`` random
   pruning plans (random per-group channel ratios, some unstructured groups) are
   pruned with the pruning engine, exported and timed end to end, each **against
   the dense model in interleaved rounds** (:func:`~autoprune.costmodel.builder.measure.measure_vs_reference`): a shared
   host's speed drifts (here by ±20 % within a minute), so each candidate's time is
   taken as its ratio to the dense model measured in the same window, times the
   dense model's median time over the whole calibration.
   Uniform plans (``UNIFORM_LADDER``) anchor the small end a search explores.
3. **Fit**: the LUT and its fallback regressor on (1); then, on (2), each kernel's
   in-context scale and the weight-streaming term
   (:meth:`~autoprune.costmodel.lut.LutCostModel.fit_kernel_scales`: ``latency = c + Σ_k a_k ×
   table_k + β × weight MB that does not stay cached``, the ``a_k`` shrunk towards one scale per op
   class), or with fewer than :data:`MIN_SCALE_FIT` fit models the global
   ``alpha × Σ^power`` correction. The fit uses the dense model, the uniform plans and
   the first three quarters of the random plans; the rest are held out and only
   used to measure the error stored in the calibration.

What to measure is a :class:`CalibrationOptions` record; what to measure it on (the model, the
runtime, the target) and the progress callback are :func:`calibrate`'s other arguments.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from autoprune.errors import ConfigError, NoisyMeasurementError

from ..base import CostModel, FitSample, Provenance
from ..energy import apply_energy_fit
from ..lut import LutCostModel, one_dimensional
from ..targets import spec_from_profile, target_spec
from ..template import CandidateShape, ModelTemplate, export_onnx_bytes
from .energy_fit import fit_energy
from .measure import KERNEL_PROTOCOL, RelativeMeasurement, measure_ms, measure_vs_reference
from .microbench import kernel_graph, overhead_graph

if TYPE_CHECKING:
    from autoprune.hardware.records import HardwareProfile

__all__ = [
    "DEFAULT_GRID", "CalibrationOptions", "CalibrationResult", "calibrate", "error_by_decile", "error_metrics",
    "kernel_grid",
    "prune_random", "random_plan",
]

#: Kept-channel fractions measured per layer.
DEFAULT_GRID: tuple[float, ...] = (0.125, 0.25, 0.5, 0.75, 1.0)
#: Uniform channel ratios measured end to end with every calibration (they fit the correction).
UNIFORM_LADDER = (0.5, 0.75, 0.9)
#: Largest share of isolated measurements that may be rejected as too noisy before a calibration fails
#: (the rest are kept: a missing grid point is filled from its table, a missing table by the regressor).
MAX_REJECTED_SHARE = 0.25
#: Fewest whole-model fit points for per-kernel scales (else the global correction).
MIN_SCALE_FIT = 12
#: Share of the random plans that fit the whole-model terms (the rest are held out).
FIT_SHARE = 0.75


@dataclass(frozen=True)
class CalibrationOptions:
    """What a calibration measures (everything but the model, the runtime and the target).

    Attributes:
        plans: Random plans measured end to end (three quarters fit, the rest are held out).
        grid: Kept-channel fractions per layer, each in (0, 1].
        seed: Seed of the random plans (and of the isolated kernels' random weights).
        round_to: Channel alignment of the grid and of the random plans (1 = none, as the default search
            spaces prune; 8 = AVX2 NCHWc block of ONNX Runtime's CPU kernels, for a space with
            ``round_to: 8``).
        min_channels: The fewest channels a plan keeps per group, as the search space's ``min_channels``:
            every layer's grid measures that count too, so the tables reach the smallest plans a
            search exports instead of extrapolating below them.
        max_ratio: The largest channel ratio of the random plans and the top of the uniform ladder, as
            the search space's largest ratio.
        max_cv: Noise bound of the isolated measurements as a robust CV (``None``: ``KERNEL_PROTOCOL``'s
            0.2; a noisy point is measured again under three times the bound, then rejected).
        threads: Intra-op threads of the default runtime (when :func:`calibrate` gets none).
        num_classes: Classifier width of a zoo model.
        input_size_px: Input side in pixels (``None``: the zoo model's, or 32 for a given module).
        in_channels: Input channels (3 for images).

    Raises:
        ConfigError: On a ``max_cv`` that is not a positive number, or a grid fraction outside (0, 1].
    """

    plans: int = 8
    grid: tuple[float, ...] = DEFAULT_GRID
    seed: int = 0
    round_to: int = 1
    min_channels: int = 4
    max_ratio: float = 0.95
    max_cv: float | None = None
    threads: int | None = 1
    num_classes: int = 10
    input_size_px: int | None = None
    in_channels: int = 3

    def __post_init__(self) -> None:
        if self.max_cv is not None and not (self.max_cv > 0 and np.isfinite(self.max_cv)):
            raise ConfigError(f"max_cv must be a positive number (0.2 = 20 % robust CV), got {self.max_cv!r}")
        object.__setattr__(self, "grid", tuple(float(g) for g in self.grid))
        if not self.grid or not all(0 < g <= 1 for g in self.grid):  # NaN fails both comparisons
            raise ConfigError(f"grid fractions must lie in (0, 1], got {self.grid!r}")
        if not 0 < self.max_ratio < 1:
            raise ConfigError(f"max_ratio must lie in (0, 1), got {self.max_ratio!r}")
        if self.min_channels < 1 or self.round_to < 1:
            raise ConfigError(f"min_channels and round_to must be >= 1, got {self.min_channels} and {self.round_to}")

    @property
    def ladder(self) -> tuple[float, ...]:
        """The uniform channel ratios measured end to end: :data:`UNIFORM_LADDER` up to ``max_ratio``."""
        return tuple(sorted({r for r in UNIFORM_LADDER if r <= self.max_ratio} | {self.max_ratio}))


@dataclass(frozen=True)
class CalibrationResult:
    """What :func:`calibrate` produced.

    Attributes:
        model: The fitted cost model.
        error: Held-out error block (``heldout_mape``, ``heldout_spearman``, ...).
        runtime: Description of the runtime measured.
        kernel_points: Isolated measurements taken.
        seconds: Wall time of the whole calibration.
    """

    model: CostModel
    error: dict[str, Any]
    runtime: str
    kernel_points: int
    seconds: float


def error_metrics(predicted: Sequence[float], measured: Sequence[float]) -> dict[str, float]:
    """MAPE, share within ±10 %, Spearman ρ and Kendall τ of predictions."""
    from scipy.stats import kendalltau, spearmanr

    p, m = np.asarray(predicted, float), np.asarray(measured, float)
    rel = np.abs(p / m - 1.0)
    out = {"mape": float(rel.mean()), "within_10pct": float(np.mean(rel <= 0.10)), "n": len(m)}
    if len(m) >= 3:
        out["spearman"] = float(spearmanr(p, m)[0])
        out["kendall"] = float(kendalltau(p, m)[0])
    return out


def error_by_decile(predicted: Sequence[float], measured: Sequence[float], bins: int = 10) -> list[dict[str, Any]]:
    """The error per latency decile of the measured plans, fastest first (the front's end, where users pick).

    Plans are sorted by measured latency and split into ``min(bins, n)`` near-equal groups, so with fewer
    than ten plans each "decile" is one plan.

    Returns:
        One ``{"decile", "n", "low_ms", "high_ms", "mape", "within_10pct", "mean_signed_pct"}`` per group.
    """
    p, m = np.asarray(predicted, float), np.asarray(measured, float)
    if len(m) == 0:
        return []
    order = np.argsort(m)
    out = []
    for i, idx in enumerate(np.array_split(order, min(bins, len(m)))):
        rel = p[idx] / m[idx] - 1.0
        out.append({"decile": i + 1, "n": int(len(idx)), "low_ms": float(m[idx].min()), "high_ms": float(m[idx].max()),
                    "mape": float(np.mean(np.abs(rel))), "within_10pct": float(np.mean(np.abs(rel) <= 0.10)),
                    "mean_signed_pct": float(100.0 * rel.mean())})
    return out


def _fixed_dims(template: ModelTemplate) -> tuple[set[int], set[int]]:
    """Kernels whose cin is the graph input, and kernels whose cout is the graph output."""
    consumers: dict[int, int] = {}
    for k in template.kernels:
        for j in k.inputs_from:
            consumers[j] = consumers.get(j, 0) + 1
    fixed_in = {i for i, k in enumerate(template.kernels) if not k.inputs_from}
    last_param = max(i for i, m in enumerate(template.param_modules) if m)
    fixed_out = {i for i in range(len(template.kernels)) if consumers.get(i, 0) == 0} | {last_param}
    return fixed_in, fixed_out


def kernel_grid(template: ModelTemplate, grid: Sequence[float] = DEFAULT_GRID, round_to: int = 1,
                min_channels: int = 1) -> dict[str, list[tuple[Any, int, int]]]:
    """Return ``{config key: [(features, cin, cout), ...]}`` to measure (shared configs once).

    Counts are ``fraction × dense`` rounded to a multiple of ``round_to`` (the same
    alignment the pruning plans use), never below ``max(round_to, min_channels)`` or above dense,
    and that smallest count is measured too: the fewest channels a plan keeps.
    """
    fixed_in, fixed_out = _fixed_dims(template)
    plan: dict[str, list[tuple[Any, int, int]]] = {}
    for i, (f, key) in enumerate(zip(template.features, template.keys)):
        if key in plan or f.op == "reshape":
            continue

        # A grouped (not depthwise) conv keeps both counts divisible by its groups, as pruning does.
        grouped = f.op_class == "conv" and f.groups > 1
        step = math.lcm(max(1, round_to), f.groups) if grouped else max(1, round_to)

        def counts(c: int, fixed: bool, r: int = step, grouped: bool = grouped) -> list[int]:
            if fixed or (grouped and c % r):
                return [c]
            low = min(c, max(r, math.ceil(min_channels / r) * r))
            return sorted({min(c, max(low, round(c * g / r) * r)) for g in grid} | {low})

        if one_dimensional(key):
            cs = counts(f.cout, i in fixed_out and i in fixed_in)
            plan[key] = [(f, c, c) for c in cs]
        else:
            plan[key] = [(f, ci, co) for ci in counts(f.cin, i in fixed_in) for co in counts(f.cout, i in fixed_out)]
    return plan


def random_plan(groups: Sequence[Any], rng: np.random.Generator, *, max_ratio: float = 0.9,
                p_unstructured: float = 0.15, p_keep: float = 0.15, round_to: int | None = None,
                min_channels: int = 1):
    """A random pruning plan: per-group channel ratios, a few unstructured groups."""
    from autoprune.pruning import GroupPlan, PlanSettings, PruningPlan

    pairs = []
    for g in groups:
        u = rng.random()
        if "unstructured" in g.allowed and u < p_unstructured:
            gp = GroupPlan("unstructured", float(rng.uniform(0.3, 0.9)), "l1")
        elif "channel" in g.allowed and u < 1 - p_keep:
            gp = GroupPlan("channel", float(rng.uniform(0.0, max_ratio)), "l1")
        else:
            gp = GroupPlan("keep", 0.0, "l1")
        pairs.append((g.name, gp))
    return PruningPlan(tuple(pairs), PlanSettings(round_to=round_to if round_to and round_to > 1 else None,
                                                  min_channels=max(1, int(min_channels))))


def prune_random(model: Any, example: Any, groups: Sequence[Any], rng: np.random.Generator, **kw: Any) -> Any:
    """Prune ``model`` with a random plan; return the permanent pruned module."""
    from autoprune.pruning import prune_model

    return prune_model(model, random_plan(groups, rng, **kw), example).make_permanent()


def calibrate(model_name: str, options: CalibrationOptions = CalibrationOptions(), *,
              target: str | HardwareProfile = "local", runtime: Any = None, model: Any = None,
              progress: Callable[[int, int, str], None] | None = None) -> CalibrationResult:
    """Measure and fit a LUT cost model for ``model_name`` on this machine (or an RPC device).

    Args:
        model_name: Zoo model name (or a name for ``model``).
        options: What to measure (plans, grid, seed, alignment, noise bound...).
        target: The target whose facts (sparsity support, power) apply: its loaded
            :class:`~autoprune.hardware.records.HardwareProfile`, or its name.
        runtime: A :class:`~autoprune.profiling.Runtime`; default ONNX Runtime CPU with ``options.threads``.
        model: An ``nn.Module`` to use instead of building ``model_name`` from the zoo.
        progress: ``progress(done, total, what)`` callback (the CLI passes a tqdm bar).

    Returns:
        A :class:`CalibrationResult`.
    """
    import torch

    from autoprune.models import DEFAULT_INPUT_SIZE, build_model, natural_input_size
    from autoprune.profiling import get_runtime
    from autoprune.pruning import PlanSettings, PruningPlan, check_groups, discover_groups, prune_model

    o = options
    start = time.perf_counter()
    if runtime is None:
        runtime = get_runtime("onnxruntime", threads=o.threads)
    size = o.input_size_px or (natural_input_size(model_name) if model is None else DEFAULT_INPUT_SIZE)
    dense = (model if model is not None else build_model(model_name, num_classes=o.num_classes,
                                                         in_channels=o.in_channels, input_size=size)).eval()
    example = torch.zeros(1, o.in_channels, size, size)
    template = ModelTemplate.from_model(dense, example, model_name)
    todo = kernel_grid(template, o.grid, o.round_to, o.min_channels)
    total = sum(len(v) for v in todo.values()) + 1 + 1 + len(o.ladder) + o.plans
    done = 0

    def tick(what: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total, what)

    kernel_protocol = {**KERNEL_PROTOCOL, **({"max_cv": float(o.max_cv)} if o.max_cv is not None else {})}
    rejected: list[str] = []

    def measure_point(graph: bytes, what: str) -> float | None:
        """One isolated measurement; a point still too noisy under the relaxed bound is rejected, not stored."""
        try:
            return measure_ms(runtime, graph, kernel_protocol)
        except NoisyMeasurementError as exc:
            rejected.append(f"{what}: {str(exc).split(': ', 1)[-1].split(';')[0]}")
            return None

    overhead = measure_point(overhead_graph(), "runtime overhead")
    tick("runtime overhead")
    samples: list[FitSample] = []
    n_points = 0
    for key, points in todo.items():
        for f, ci, co in points:
            feats = f.with_channels(ci, co)
            n_points += 1
            ms = measure_point(kernel_graph(feats, seed=o.seed), f"{key} cin={ci} cout={co}")
            if ms is not None:
                samples.append(FitSample((feats,), (key,), max(ms - (overhead or 0.0), 0.1 * ms), "kernel"))
            tick(key.split("|")[0])
    if len(rejected) > MAX_REJECTED_SHARE * (n_points + 1):
        raise NoisyMeasurementError(
            f"calibration of {model_name}: {len(rejected)} of {n_points + 1} isolated measurements were too noisy "
            f"to store (first: {rejected[0]}); quiet the machine (nothing else running) and profile again")
    spec = target_spec(target) if isinstance(target, str) else spec_from_profile(target)
    cost_model = LutCostModel(spec, template)
    cost_model.fit(samples)

    rng = np.random.default_rng(o.seed)
    # The groups a search would use: each test-pruned at the largest ratio the random plans draw, so a
    # user's model with shuffles or grouped convs never breaks a calibration plan.
    groups = list(check_groups(dense, example, discover_groups(dense, example), max_ratio=o.max_ratio,
                               structures=("keep", "channel", "unstructured")).groups)
    shapes: list[CandidateShape] = []
    relative: list[RelativeMeasurement] = []
    dense_graph = export_onnx_bytes(dense, example)
    reference = runtime.runner(dense_graph) if hasattr(runtime, "runner") else dense_graph

    def measure_model(module: Any, what: str, graph: bytes | None = None) -> None:
        graph = graph if graph is not None else export_onnx_bytes(module, example)
        shapes.append(template.describe(module))
        relative.append(measure_vs_reference(runtime, graph, reference))
        tick(what)

    measure_model(dense, "dense model", dense_graph)
    # The correction must span what a search explores (down to a few % of the channels):
    # uniform plans anchor the small end, random plans the mixtures.
    aligned = PlanSettings(round_to=o.round_to if o.round_to > 1 else None, min_channels=o.min_channels)
    for ratio in o.ladder:
        measure_model(prune_model(dense, PruningPlan.uniform(groups, "channel", ratio, "l1", settings=aligned),
                                  example).make_permanent(), "uniform plan")
    for _ in range(o.plans):
        measure_model(prune_random(dense, example, groups, rng, round_to=o.round_to, max_ratio=o.max_ratio,
                                   min_channels=o.min_channels), "random plan")
    # The host's speed drifts; each model's time is its ratio to the dense model in the same window,
    # times the dense model's median time over the whole calibration.
    dense_ms = float(np.median([m.reference_ms for m in relative]))
    measured = [m.ratio * dense_ms for m in relative]
    fit_plans = min(o.plans - 1, int(np.ceil(FIT_SHARE * o.plans))) if o.plans > 1 else o.plans  # >= 1 held out
    n_fit = 1 + len(o.ladder) + fit_plans
    if n_fit >= MIN_SCALE_FIT:
        whole_fit = {"method": "per-kernel in-context scales + weight streaming "
                               "(c + sum a_k x table_k + beta x streamed weight MB)",
                     **cost_model.fit_kernel_scales(shapes[:n_fit], measured[:n_fit])}
    else:
        cost_model.fit_correction(shapes[:n_fit], measured[:n_fit])
        whole_fit = {"method": "global correction alpha x sum^power", "alpha": cost_model.alpha,
                     "power": cost_model.power}
    held = [cost_model.predict(s).latency_ms for s in shapes[n_fit:]]
    err = error_metrics(held, measured[n_fit:]) if held else {"n": 0}
    error = {
        "heldout_mape": err.get("mape"), "heldout_spearman": err.get("spearman"),
        "heldout_within_10pct": err.get("within_10pct"), "n_heldout": err.get("n", 0),
        "heldout_by_decile": error_by_decile(held, measured[n_fit:]),
        "note": f"{err.get('n', 0)} held-out random plans measured end to end on {runtime.describe()}, each "
                f"against the dense model in the same window ({whole_fit['method']} fitted on the dense model + "
                f"{n_fit - 1} uniform and random plans)",
        "fit_points": [{"measured_ms": m, "raw_ms": r.latency_ms, "ratio_to_dense": r.ratio,
                        "predicted_ms": cost_model.predict(s).latency_ms, "heldout": i >= n_fit}
                       for i, (s, m, r) in enumerate(zip(shapes, measured, relative))],
        "dense_reference_ms": dense_ms,
        "dense_reference_range_ms": [float(min(m.reference_ms for m in relative)),
                                     float(max(m.reference_ms for m in relative))],
        "whole_model_fit": whole_fit,
        "runtime_overhead_ms": overhead,
        "rejected_points": rejected,
        "kernel_protocol": kernel_protocol,
    }
    desc = f"{runtime.describe()}, threads={getattr(runtime, 'threads', o.threads)}"
    cost_model.provenance = Provenance(
        cost_model="lut", target=target if isinstance(target, str) else target.name, runtime=desc,
        status="measured", calibration_id="(unsaved)",
        heldout_mape=error["heldout_mape"], heldout_spearman=error["heldout_spearman"],
        n_heldout=int(error["n_heldout"]), note=error["note"])
    # Energy: fitted to sensor readings where the runtime read one, else modelled (one place; see builder.energy_fit).
    error["energy"] = fit_energy([m.energy for m in relative], n_fit)
    apply_energy_fit(cost_model, error["energy"])
    return CalibrationResult(cost_model, error, desc, len(samples), time.perf_counter() - start)
