"""MetaSchedule tuning of a TVM Relax module on CPU, kept in a database folder the caller names.

Why tuning "segfaulted": ``apache-tvm 0.27.0.post1`` accepts ``apache-tvm-ffi`` 0.1.15, whose ``ToJSONGraph``
segfaults on every TIR object (``tvm.ir.save_json(tvm.tirx.IntImm("int32", 1))``), and MetaSchedule serialises TIR
for its tune contexts, workers and database; ``apache-tvm-ffi<0.1.15`` works (:func:`check_tvm_ffi`). Then importing
``tvm.s_tir.tensor_intrin`` parses CUDA's intrinsics for over a minute (skipped for a CPU target), and TVM's
``LocalBuilder`` starts new workers each batch, whose first build repeats that import and times out at 30 s: every
trial fails (the builder here keeps its workers). ``mcpu: native`` is built as ``generic``: see :func:`host_cpu_target`.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import version
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from autoprune.errors import ConfigError, ProfilingError

__all__ = ["TaskTuning", "Timing", "TuningResult", "build_tuned", "check_tvm_ffi", "host_cpu_target",
           "time_against_onnxruntime", "tune_relax_module", "tuning_dir"]

_PROBE, _INTRIN = "import tvm; tvm.ir.save_json(tvm.tirx.IntImm('int32', 1))", "tvm.s_tir.tensor_intrin"
_RECORDS, _WORKLOADS, _MANIFEST = "database_tuning_record.json", "database_workload.json", "tuning.json"
#: Search batch, per-candidate bounds (a builder worker's first build imports TVM), and a smaller search than TVM's
#: (512, 4 generations: a minute a batch on 2 cores); with the random cost model (no xgboost) ReplayTrace samples.
_PER_ITER, _BUILD_TIMEOUT_S, _RUN_TIMEOUT_S = 16, 300.0, 120.0
#: Trials every task gets first, by ReplayTrace (no evolutionary search): a task without a record is built untuned.
_FIRST = 4
_EVOLUTION = {"population_size": 128, "init_min_unmeasured": 32, "genetic_num_iters": 2}


@dataclass(frozen=True)
class TaskTuning:
    """One task (``weight``: its uses in the module): trials measured before this call and by it, best run in µs."""

    name: str
    weight: int
    trials_before: int
    trials_run: int
    best_us: float | None


@dataclass(frozen=True)
class TuningResult:
    """What :func:`tune_relax_module` did: ``work_dir`` holds the database (``database_path``: its records),
    ``tuning.json`` and ``logs/``; ``tasks``, the costliest first; ``trials_run``, this call's measurements (0 if the
    database covered the budget); ``stopped``, ``"timeout"`` if ``timeout_s`` cut tuning; ``cost_model``, xgb|random."""

    work_dir: Path
    database_path: Path
    target: str
    tasks: tuple[TaskTuning, ...]
    trials_run: int
    records: int
    seconds: float
    stopped: str | None
    cost_model: str


@dataclass(frozen=True)
class Timing:
    """One runner of :func:`time_against_onnxruntime`: median and quartiles of its per-round batch medians."""

    name: str
    median_ms: float
    q1_ms: float
    q3_ms: float
    max_rel_diff: float


@lru_cache(maxsize=1)
def check_tvm_ffi() -> None:
    """Refuse an ``apache-tvm-ffi`` that cannot serialise TIR (probed in a subprocess, once per process if it can).

    Raises:
        ProfilingError: ``tvm.ir.save_json`` of a TIR integer crashed or failed.
    """
    proc = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=900)
    if rc := proc.returncode:
        why = f"killed by signal {-rc}" if rc < 0 else f"failed: {(proc.stderr.strip().splitlines() or [''])[-1]}"
        raise ProfilingError(f"apache-tvm-ffi {version('apache-tvm-ffi')} cannot serialise TIR for apache-tvm "
                             f"{version('apache-tvm')} (tvm.ir.save_json of a TIR IntImm {why}), which MetaSchedule "
                             "needs: pip install 'apache-tvm-ffi<0.1.15' (0.1.14.post1 works with TVM 0.27)")


def host_cpu_target(threads: int) -> dict[str, Any]:
    """This machine's CPU as a TVM target dict, ``mcpu`` named by LLVM (TVM 0.27 turns ``native`` into generic)."""
    import tvm
    return {"kind": "llvm", "mcpu": str(tvm.target.codegen.llvm_get_system_cpu()), "num-cores": int(threads)}


def tuning_dir(root: Path, target: Mapping[str, Any], model: str) -> Path:
    """``root/<target>/<model>``, e.g. ``results/tvm-tuning/llvm-znver4-2c/resnet20``."""
    parts = [str(target.get("tag") or target.get("kind", "target")).replace("/", "-"), str(target.get("mcpu", "")),
             f"{target['num-cores']}c" if target.get("num-cores") else ""]
    return Path(root) / "-".join(p for p in parts if p) / model


def _target(target: Any) -> Any:
    return __import__("tvm").target.Target(dict(target)) if isinstance(target, Mapping) else target


def _import_tensor_intrinsics(target: Any) -> None:
    """Register TVM's tensor intrinsics, for a CPU target without the GPUs' and DSPs' (CUDA's take over a minute)."""
    if target.kind.name != "llvm" or _INTRIN in sys.modules:
        import tvm.s_tir.tensor_intrin  # registers the intrinsics
        if target.kind.name == "cuda":
            import tvm.s_tir.tensor_intrin.cuda  # left out by an earlier CPU tuning
        return
    stubs = [n for k in ("cuda", "rocm", "hexagon", "metal") if (n := f"{_INTRIN}.{k}") not in sys.modules]
    sys.modules.update({n: types.ModuleType(n) for n in stubs})
    try:
        import tvm.s_tir.tensor_intrin  # noqa: F401 - registers the intrinsics
    finally:
        for name in stubs:  # a later import of one of them loads the real module
            del sys.modules[name]


def _prepared(mod: Any, target: Any) -> Any:
    """The fused module whose PrimFuncs are the tasks: ``compile_relax``'s passes and context, so that keys match."""
    import tvm
    from tvm import relax
    from tvm.relax import pipeline
    try:
        dispatch = list(pipeline.library_dispatch_passes(target))
    except (ValueError, AttributeError):
        dispatch = []
    seq = [*dispatch, relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
           relax.transform.FoldConstant(), relax.transform.FuseOps(), relax.transform.FuseTIR()]
    with target, tvm.transform.PassContext(opt_level=3):
        return tvm.transform.Sequential(seq)(relax.transform.DecomposeOpsForInference()(mod))


def _build_candidate(args: tuple[Any, Any]) -> str:
    """Build one candidate in a builder worker: TVM's ``default_build`` without its intrinsics import."""
    from tvm.driver import build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock
    from tvm.support.tar import tar
    lib = build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(args[0]), target=args[1])
    path = os.path.join(tempfile.mkdtemp(prefix="autoprune-ms-"), "candidate." + tar.output_format)
    lib.export_library(path, fcompile=tar)
    return path


@lru_cache(maxsize=1)
def _classes() -> tuple[type, type]:
    """The builder and measure-callback classes (made on first use: they need tvm)."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback
    from tvm.support.popen_pool import PopenPoolExecutor, StatusKind

    @derived_object
    class PoolBuilder(PyBuilder):
        """Builds candidates in ``workers`` processes that live for the whole run."""

        def __init__(self, workers: int) -> None:
            super().__init__()
            self.pool = PopenPoolExecutor(max_workers=workers, timeout=_BUILD_TIMEOUT_S)

        def build(self, build_inputs: list) -> list:
            done = self.pool.map_with_error_catching(_build_candidate, [(b.mod, b.target) for b in build_inputs])
            return [BuilderResult(r.value, None) if r.status == StatusKind.COMPLETE else BuilderResult(None, (
                f"timeout after {_BUILD_TIMEOUT_S:g} s" if r.status == StatusKind.TIMEOUT else str(r.value)))
                for r in done]

    @derived_object
    class Watch(PyMeasureCallback):
        """Counts each measured batch into ``entry``, then calls ``saved(n)``."""

        def __init__(self, entry: dict[str, Any], saved: Callable[[int], None]) -> None:
            super().__init__()
            self.entry, self.saved = entry, saved

        def apply(self, task_scheduler: Any, task_id: int, measure_candidates: list, builder_results: list,
                  runner_results: list) -> None:
            self.entry["trials"] += len(measure_candidates)
            for secs in (list(map(float, r.run_secs)) for r in runner_results if r.error_msg is None and r.run_secs):
                self.entry["best_us"] = min(self.entry.get("best_us", math.inf), 1e6 * statistics.mean(secs))
            self.saved(len(measure_candidates))

    return PoolBuilder, Watch


@lru_cache(maxsize=2)
def _measurers(workers: int) -> tuple[Any, Any]:
    """The builder and runner, kept for the process (a new pool's first build imports TVM again: ~20 s a call)."""
    from tvm.s_tir.meta_schedule.runner import LocalRunner

    builder, runner = _classes()[0](workers), LocalRunner(timeout_sec=_RUN_TIMEOUT_S)
    atexit.register(lambda: [owner.pool.shutdown(wait=False) for owner in (builder, runner)])
    return builder, runner


def _database(work_dir: Path) -> Any:
    """Open the JSON database in ``work_dir``, first dropping a last line that a kill cut off; records TVM wrote
    but cannot read back (seen on a reduction's RFactor trace, which then fails every later load) are moved to
    ``database_unreadable.json``."""
    from tvm.s_tir import meta_schedule as ms
    work_dir.mkdir(parents=True, exist_ok=True)
    for path in (work_dir / _RECORDS, work_dir / _WORKLOADS):
        lines = path.read_text().splitlines() if path.is_file() else []
        try:
            json.loads(lines[-1] if lines else "0")
        except ValueError:
            path.write_text("".join(ln + "\n" for ln in lines[:-1]))
    try:
        return ms.database.JSONDatabase(work_dir=str(work_dir), module_equality="structural")
    except Exception:  # noqa: BLE001 - TVM's own error type: set the records it cannot read aside
        works = [ms.database.Workload.from_json(json.loads(w)) for w in (work_dir / _WORKLOADS).read_text().split("\n")
                 if w]
        lines = (work_dir / _RECORDS).read_text().splitlines()
        keep = {line: _readable(ms, line, works) for line in lines}
        with open(work_dir / "database_unreadable.json", "a") as out:
            out.writelines(line + "\n" for line in lines if not keep[line])
        (work_dir / "records.tmp").write_text("".join(line + "\n" for line in lines if keep[line]))
        os.replace(work_dir / "records.tmp", work_dir / _RECORDS)
        return ms.database.JSONDatabase(work_dir=str(work_dir), module_equality="structural")


def _readable(ms: Any, line: str, works: list) -> bool:
    try:
        record = json.loads(line)
        ms.database.TuningRecord.from_json(record[1], works[record[0]])
        return True
    except Exception:  # noqa: BLE001 - TVM's own error type
        return False


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.with_suffix(".tmp").write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(path.with_suffix(".tmp"), path)


def _logger(work_dir: Path) -> Any:
    """A logger into ``work_dir/logs/tuning.log`` alone (a trial's log holds its whole TIR)."""
    logger = logging.getLogger(f"autoprune.tvm_tune.{work_dir.resolve()}")
    if not logger.handlers:
        (work_dir / "logs").mkdir(exist_ok=True)
        logger.addHandler(logging.FileHandler(work_dir / "logs" / "tuning.log"))
        logger.setLevel(logging.DEBUG)
        logger.propagate = False
    return logger


def tune_relax_module(mod: Any, target: Any, *, work_dir: Path, max_trials: int, timeout_s: float,
                      progress: bool = False, workers: int = 2) -> TuningResult:
    """Tune the module's tasks with MetaSchedule, keeping the records in ``work_dir``.

    Every task first gets a few trials (4, or its share), so that a deadline leaves no task untuned; then tasks
    are tuned in turn, the most expensive first, each to its share of ``max_trials`` by FLOPs times uses (2 at
    least) counting what earlier calls measured (``tuning.json``): the same call again measures nothing, a larger
    budget tunes on. Records are appended as measured, so an interrupted or timed-out run keeps them.

    Args:
        mod: A Relax ``IRModule`` with static shapes (e.g. ``tvm.relax.frontend.onnx.from_onnx``'s).
        target: A ``tvm.target.Target`` or a target dict (see :func:`host_cpu_target`).
        work_dir: The database folder, one per target and model (see :func:`tuning_dir`).
        max_trials: About the total trials for the module.
        timeout_s: Bound on the call: the batch in flight at the deadline (or at a Ctrl-C, re-raised) ends.
        progress: One line per measured batch on stderr.
        workers: Builder processes and search threads (2 at most).

    Returns:
        A :class:`TuningResult`.

    Raises:
        ConfigError: ``max_trials`` below 0.
        ProfilingError: A broken ``apache-tvm-ffi`` (see :func:`check_tvm_ffi`).
    """
    if max_trials < 0:
        raise ConfigError(f"max_trials must be >= 0, got {max_trials}")
    check_tvm_ffi()
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.analysis import estimate_tir_flops

    start, target, work_dir, workers = time.monotonic(), _target(target), Path(work_dir), min(workers, 2)
    deadline, sigint = [start + float(timeout_s)], signal.getsignal(signal.SIGINT)
    tasks = ms.relax_integration.extract_tasks(_prepared(mod, target), target)
    weight = {t.task_name: max(float(estimate_tir_flops(t.dispatched[0])), 1.0) * int(t.weight) for t in tasks}
    tasks.sort(key=lambda t: -weight[t.task_name])
    want = {n: max(2, math.ceil(max_trials * w / sum(weight.values()))) if max_trials else 0 for n, w in weight.items()}
    db, manifest_path = _database(work_dir), work_dir / _MANIFEST
    manifest = {**(json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}), "target": str(target)}
    book = {t.task_name: manifest.setdefault("tasks", {}).setdefault(
        hashlib.sha1((str(target) + t.dispatched[0].script()).encode()).hexdigest()[:16],
        {"name": t.task_name, "trials": 0, "covered": 0}) for t in tasks}
    before = {n: e["trials"] for n, e in book.items()}
    todo = [t for t in tasks if max(book[t.task_name]["trials"], book[t.task_name]["covered"]) < want[t.task_name]]
    cost = "xgb" if find_spec("xgboost") else "random"
    try:
        if threading.current_thread() is threading.main_thread():  # Ctrl-C: end the batch, keep the records
            signal.signal(signal.SIGINT, lambda *_: deadline.__setitem__(0, -math.inf))
        if todo and time.monotonic() < deadline[0]:
            _import_tensor_intrinsics(target)
            (builder, runner), watch_cls = _measurers(workers), _classes()[1]
            model = ms.cost_model.CostModel.create(cost, num_tuning_cores=workers)
        for goals in ({n: min(g, _FIRST) for n, g in want.items()}, want):  # a few trials each first, then shares
            search = ms.search_strategy.ReplayTrace if cost == "random" or goals is not want else None
            for i, task in enumerate(todo):
                entry, goal = book[task.task_name], goals[task.task_name]

                def saved(n: int, entry: dict[str, Any] = entry, i: int = i, goal: int = goal) -> None:
                    _write_json(manifest_path, manifest)
                    if progress and n:
                        print(f"tvm-tune: task {i + 1}/{len(todo)} {entry['name']}: {entry['trials']}/{goal} trials, "
                              f"best {entry.get('best_us', math.nan):.1f} us, {time.monotonic() - start:.0f} s",
                              file=sys.stderr)

                while max(entry["trials"], entry["covered"]) < goal and time.monotonic() < deadline[0]:  # a batch
                    n, had = min(_PER_ITER, goal - entry["trials"]), entry["trials"]
                    ctx = ms.TuneContext(mod=task.dispatched[0], target=target, space_generator="post-order-apply",
                                         search_strategy=search() if search else
                                         ms.search_strategy.EvolutionarySearch(**_EVOLUTION), task_name=task.task_name,
                                         logger=_logger(work_dir), rand_state=1000 * i + had + 1, num_threads=workers)
                    ms.tune.tune_tasks(tasks=[ctx], task_weights=[1.0], work_dir=str(work_dir), max_trials_global=n,
                                       max_trials_per_task=n, num_trials_per_iter=n, builder=builder, runner=runner,
                                       database=db, cost_model=model, task_scheduler="round-robin",
                                       measure_callbacks=[*ms.measure_callback.MeasureCallback.create("default"),
                                                          watch_cls(entry, saved)])
                    if entry["trials"] - had < n:  # the search ran out of new candidates
                        entry["covered"] = want[task.task_name]
                    _write_json(manifest_path, manifest)
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, sigint)
    if deadline[0] == -math.inf:
        raise KeyboardInterrupt
    rows = tuple(TaskTuning(name=t.task_name, weight=int(t.weight), trials_before=before[t.task_name],
                            trials_run=book[t.task_name]["trials"] - before[t.task_name],
                            best_us=book[t.task_name].get("best_us")) for t in tasks)
    stopped = "timeout" if any(max(e["trials"], e["covered"]) < want[n] for n, e in book.items()) else None
    return TuningResult(work_dir=work_dir, database_path=work_dir / _RECORDS, target=str(target), tasks=rows,
                        trials_run=sum(r.trials_run for r in rows), records=len(db), stopped=stopped,
                        seconds=time.monotonic() - start, cost_model=cost)


def build_tuned(mod: Any, target: Any, database: Path | TuningResult | Any) -> Any:
    """Compile the Relax module given to :func:`tune_relax_module` for its target (``Target`` or dict) with the
    best schedules of ``database`` (a :class:`TuningResult`, its ``work_dir`` or a MetaSchedule ``Database``;
    kernels it lacks stay untuned) into a ``relax.VMExecutable`` (``export_library`` writes it)."""
    check_tvm_ffi()
    from tvm import relax
    from tvm.s_tir import meta_schedule as ms
    database = database.work_dir if isinstance(database, TuningResult) else database
    database = _database(Path(database)) if isinstance(database, (str, os.PathLike)) else database
    _import_tensor_intrinsics(target := _target(target))
    return ms.relax_integration.compile_relax(database, relax.transform.DecomposeOpsForInference()(mod), target,
                                              params=None)


def time_against_onnxruntime(onnx_path: Path, executables: Mapping[str, Any], *, tvm_threads: int,
                             ort_threads: Sequence[int] = (1, 2), rounds: int = 10, min_time_s: float = 0.2,
                             seed: int = 0) -> list[Timing]:
    """Time TVM executables (``{name: relax.VMExecutable}``, compiled from ``onnx_path``: one input, batch 1) and ONNX
    Runtime (a session per count in ``ort_threads``) in interleaved rounds, TVM's pool with ``tvm_threads``.

    Each of ``rounds`` rounds times a batch (``min_time_s`` long) of every runner in a rotating order, on one input
    drawn with ``seed``; a runner's figure is the median of its batch medians, and its outputs are compared with the
    first ONNX Runtime session's. Returns one :class:`Timing` per runner: the executables, then
    ``onnxruntime-<n>t``.

    Raises:
        ConfigError: A model with more than one input, or an input shape that is not concrete.
    """
    import numpy as np
    import tvm
    from tvm import relax

    from autoprune.profiling.base import graph_inputs, load_onnx
    from autoprune.profiling.ort import create_session
    from autoprune.profiling.protocol import measure_callable
    inputs = graph_inputs(load_onnx(str(onnx_path)))
    if len(inputs) != 1 or not all(isinstance(d, int) and d > 0 for d in inputs[0][1]):
        raise ConfigError(f"time_against_onnxruntime takes one input of a concrete shape; {onnx_path} has {inputs}")
    name, x = inputs[0][0], np.random.default_rng(seed).random(inputs[0][1], dtype=np.float32)
    runs, outs = {}, {}  # each runner's call and output
    tvm.get_global_func("runtime.config_threadpool")(1, int(tvm_threads))
    for label, ex in executables.items():
        vm, arg = relax.VirtualMachine(ex, tvm.cpu()), tvm.runtime.tensor(x, tvm.cpu())
        got = vm["main"](arg)
        outs[label] = (got if hasattr(got, "numpy") else got[0]).numpy()
        vm.set_input("main", arg)
        runs[label] = lambda v=vm: v.invoke_stateful("main")
    for n in ort_threads:
        sess = create_session(str(onnx_path), threads=n)[0]
        runs[f"onnxruntime-{n}t"] = lambda s=sess: s.run(None, {name: x})
        outs[f"onnxruntime-{n}t"] = sess.run(None, {name: x})[0]
    ref, names = outs[f"onnxruntime-{ort_threads[0]}t"], list(runs)
    batches: dict[str, list[float]] = {n: [] for n in names}
    for r in range(max(1, rounds)):
        for n in names[r % len(names):] + names[:r % len(names)]:
            batches[n].append(measure_callable(runs[n], warmup=5 if r == 0 else 1, min_time_s=min_time_s,
                                               min_repeats=5, max_repeats=100000, max_cv=1e9, retries=0,
                                               timeout_s=600).latency_ms)
    return [Timing(name=n, median_ms=statistics.median(b), q1_ms=b[len(b) // 4], q3_ms=b[(3 * len(b)) // 4],
                   max_rel_diff=float(np.max(np.abs(outs[n] - ref)) / max(float(np.max(np.abs(ref))), 1e-12)))
            for n, b in ((n, sorted(batches[n])) for n in names)]
