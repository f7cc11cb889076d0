"""The real model zoo: discover, check, prune and export every torchvision classification model and a timm sample.

For each model (random weights, ``num_classes=10``, 3 input channels), in its own process with a time and a
memory limit: discover the groups and check them (the ``default`` space's options), time both and read the
process's peak RSS; count the groups, those kept whole (channel pruning excluded, with the reasons) and the
share of conv/linear weights still channel-prunable; draw ``--plans`` random plans from each of the
``default`` and ``sparse`` spaces, prune each, look for a zero-width layer, a grouped conv that does not
divide, a depthwise conv that is no longer depthwise, run it and export it to ONNX with the parity check.

    .venv/bin/python benchmarks/zoo_survey.py --models tv-families --plans 4
    .venv/bin/python benchmarks/zoo_survey.py --models timm-sample --plans 4 --label after

``--models``: ``tv-all`` (every name in ``torchvision.models.list_models``), ``tv-families`` (the smallest
member of each family), ``timm-sample``, or a comma-separated list of references
(``torchvision.models:NAME``, ``timm:NAME``). Results: ``results/benchmarks/zoo_survey-<label>.{jsonl,md}``
(one JSON line per model, resumable: a model already in the file is skipped).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: The smallest member of each torchvision classification family (the others differ in depth and width only).
TV_FAMILIES = (
    "alexnet", "convnext_tiny", "densenet121", "efficientnet_b0", "efficientnet_v2_s", "googlenet", "inception_v3",
    "maxvit_t", "mnasnet0_5", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small", "regnet_x_400mf",
    "regnet_y_400mf", "resnet18", "resnet50", "resnext50_32x4d", "shufflenet_v2_x0_5", "squeezenet1_0",
    "squeezenet1_1", "swin_t", "swin_v2_t", "vgg11", "vgg11_bn", "vit_b_16", "wide_resnet50_2",
)
#: timm families people deploy, and those issue 29 found failing.
TIMM_SAMPLE = (
    "cspresnet50", "cspdarknet53", "ghostnet_100", "mixnet_s", "rexnet_100", "resnest14d", "deit_tiny_patch16_224",
    "levit_128s", "edgenext_xx_small", "mobilevit_xxs", "swin_tiny_patch4_window7_224", "maxvit_tiny_tf_224",
    "poolformer_s12", "dpn68", "res2net50_14w_8s", "repvgg_a0", "lcnet_050", "fastvit_t8", "efficientformer_l1",
    "convnext_atto", "gmlp_ti16_224", "hrnet_w18_small", "tinynet_e", "convmixer_768_32",
)
#: Inputs that models need: ViT-style patch grids and windows at their own size, everything else at this.
DEFAULT_SIDE = 64


def model_refs(which: str) -> list[str]:
    if which == "tv-all":
        from autoprune.models.external import torchvision_names

        return [f"torchvision.models:{n}" for n in torchvision_names()]
    if which == "tv-families":
        return [f"torchvision.models:{n}" for n in TV_FAMILIES]
    if which == "timm-sample":
        return [f"timm:{n}" for n in TIMM_SAMPLE]
    return [r.strip() for r in which.split(",") if r.strip()]


def survey_one(ref: str, plans: int, side: int | None, fixed_side: bool = False) -> dict[str, Any]:
    """Everything measured on one model (runs in the child process)."""
    import resource

    import optuna
    import torch
    from torch import nn

    from autoprune.models.external import build_external, required_input_size
    from autoprune.pruning import check_groups, discover_groups, export_onnx, prune_model
    from autoprune.pruning.check import check_options
    from autoprune.pruning.faults import depthwise_names, layer_faults
    from autoprune.search.space import SearchSpace, plan_from_params

    torch.manual_seed(0)
    row: dict[str, Any] = {"model": ref}
    model = None
    for s in ([side] if side else [DEFAULT_SIDE, 224]):  # the model's own size where it needs one
        try:
            model = build_external(ref, num_classes=10, input_size=s).eval()
            side = required_input_size(model) or s
            with torch.no_grad():
                model(torch.zeros(1, 3, side, side))
            break
        except Exception as exc:  # noqa: BLE001 - a size the model does not take: try the next
            row["build_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
            model = None
    if model is None:
        row.update(status="crash at build", error=row["build_error"])
        return row
    x = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(0))
    row.update(side=side, params_m=round(sum(p.numel() for p in model.parameters()) / 1e6, 2))
    space = SearchSpace.load("default")
    t0 = time.perf_counter()
    stage = "discover"
    try:
        groups = discover_groups(model, x)
        row["discover_s"] = round(time.perf_counter() - t0, 1)
        stage = "check"
        result = check_groups(model, x, groups, **check_options(space, None))
    except Exception as exc:  # noqa: BLE001 - recorded as the finding
        row.update(status=f"crash at {stage}", error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}",
                   discover_check_s=round(time.perf_counter() - t0, 1),
                   peak_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
        return row
    row["discover_check_s"] = round(time.perf_counter() - t0, 1)
    if result.dense_export_error and not fixed_side:
        # What `autoprune search` does: refuse in one line, naming the side that exports; the survey goes on there.
        from autoprune.pruning.export import exportable_side

        works = exportable_side(model, (3, side, side))
        if works:
            again = survey_one(ref, plans, works, fixed_side=True)
            again["refused_at"] = f"{side} px: {result.dense_export_error[:120]}"
            return again
    row["peak_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    checked = list(result.groups)
    weights = {n: m.weight.numel() for n, m in model.named_modules()
               if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)) and isinstance(getattr(m, "weight", None),
                                                                                  torch.Tensor)}
    total = sum(weights.values()) or 1
    prunable = sum(weights.get(mem, 0) for g in checked if "channel" in g.allowed for mem in g.members)
    whole = {n: r for n, r in result.excluded.items() if "channel:" in r}
    row.update(groups=len(checked), channel_groups=sum("channel" in g.allowed for g in checked),
               kept_whole=len(whole), prunable_share=round(prunable / total, 2),
               reasons=sorted({_short(r) for r in whole.values()})[:6], dense_export_error=result.dense_export_error,
               test_prunes=result.test_prunes, exports=result.exports)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    failures, tried = [], 0
    depthwise = depthwise_names(model)
    import tempfile

    gen = torch.Generator().manual_seed(3)
    calib = [(torch.randn((2, *x.shape[1:]), generator=gen), torch.randint(0, 10, (2,), generator=gen))]
    t1 = time.perf_counter()
    for space_name in ("default", "sparse"):
        sp = SearchSpace.load(space_name)
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=11))
        for i in range(plans):
            trial = study.ask()
            plan = plan_from_params(sp, checked, sp.suggest(trial, checked), seed=i)
            study.tell(trial, 0.0)
            tried += 1
            try:
                module = prune_model(model, plan, x, calib_loader=calib).make_permanent()
                if faults := layer_faults(module, depthwise):
                    raise RuntimeError(faults[0])
                with tempfile.TemporaryDirectory() as tmp:
                    export_onnx(module, Path(tmp) / "m.onnx", x)
            except Exception as exc:  # noqa: BLE001
                failures.append(f"{space_name} {i}: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
    row.update(plans=tried, failed_plans=len(failures), plan_errors=failures[:3],
               plans_s=round(time.perf_counter() - t1, 1),
               peak_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
               status="ok" if not failures else "plans fail")
    return row


def _short(reason: str) -> str:
    text = reason.split("channel: ", 1)[-1]
    return text[:90]


def run_child(ref: str, plans: int, side: int | None, timeout_s: float, max_mb: float) -> dict[str, Any]:
    """Run :func:`survey_one` in a child process, killed past ``timeout_s`` or ``max_mb`` of RSS."""
    cmd = [sys.executable, __file__, "--one", ref, "--plans", str(plans)] + (["--side", str(side)] if side else [])
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0.0]
    killed = [""]

    def watch() -> None:
        while proc.poll() is None:
            try:
                rss = next(int(line.split()[1]) for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
                           if line.startswith("VmRSS")) / 1024
            except (OSError, StopIteration):
                rss = 0.0
            peak[0] = max(peak[0], rss)
            if rss > max_mb:
                killed[0] = f"over {max_mb:.0f} MB"
                proc.kill()
            elif time.perf_counter() - t0 > timeout_s:
                killed[0] = f"over {timeout_s:.0f} s"
                proc.kill()
            time.sleep(0.5)

    th = threading.Thread(target=watch, daemon=True)
    th.start()
    out, err = proc.communicate()
    th.join()
    if killed[0]:
        return {"model": ref, "status": f"killed: {killed[0]}", "peak_mb": round(peak[0]),
                "wall_s": round(time.perf_counter() - t0, 1)}
    try:
        row = json.loads(out.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        tail = (err.strip().splitlines() or ["no output"])[-1]
        row = {"model": ref, "status": "crash", "error": tail[:200]}
    row["wall_s"] = round(time.perf_counter() - t0, 1)
    return row


COLUMNS = ("model", "side", "params_m", "groups", "kept_whole", "prunable_share", "plans", "failed_plans",
           "discover_check_s", "peak_mb", "status")


def write_table(rows: list[dict[str, Any]], path: Path, label: str) -> None:
    lines = [f"# Model zoo survey ({label})", "",
             "Measured on this machine; `discover_check_s` is group discovery plus the check, `peak_mb` the "
             "process's peak RSS. Command: `benchmarks/zoo_survey.py` (see its docstring).", "",
             "| " + " | ".join(COLUMNS) + " | reasons kept whole / errors |", "|" + "---|" * (len(COLUMNS) + 1)]
    for r in rows:
        extra = "; ".join(r.get("reasons") or []) or r.get("error") or "; ".join(r.get("plan_errors") or [])
        lines.append("| " + " | ".join(str(r.get(c, "")) for c in COLUMNS) + f" | {extra[:300]} |")
    path.write_text("\n".join(lines) + "\n")


def compare(before: Path, after: Path) -> str:
    """A markdown table of two surveys, model by model: ``before -> after`` for each column."""
    def load(path: Path) -> dict[str, dict[str, Any]]:
        rows = {}
        for line in path.read_text().splitlines() if path.exists() else []:
            row = json.loads(line)
            rows[row["model"]] = row
        return rows

    b, a = load(before), load(after)
    cols = ("groups", "kept_whole", "prunable_share", "failed_plans", "discover_check_s", "peak_mb")
    out = ["| model | px | " + " | ".join(cols) + " | status | why kept whole / refused (after) |",
           "|" + "---|" * (len(cols) + 4)]
    for ref in list(dict.fromkeys([*b, *a])):
        rb, ra = b.get(ref, {}), a.get(ref, {})
        cells = [f"{rb.get(c, '–') if rb.get(c) is not None else '–'} → {ra.get(c) if ra.get(c) is not None else '–'}"
                 for c in cols]
        plans = f"/{ra.get('plans')}" if ra.get("plans") else ""
        cells[3] += plans
        why = "; ".join(ra.get("reasons") or []) or ra.get("error") or ""
        if ra.get("refused_at"):
            why = f"refused at {ra['refused_at']}; " + why
        status = f"{rb.get('status', '–')} → {ra.get('status', '–')}"
        out.append(f"| {ref} | {ra.get('side', rb.get('side', ''))} | " + " | ".join(cells) + f" | {status} | "
                   f"{why[:220]} |")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="tv-families")
    ap.add_argument("--plans", type=int, default=4, help="random plans per space (default, sparse)")
    ap.add_argument("--side", type=int, default=None, help="input side (default: the model's own, else 64)")
    ap.add_argument("--timeout-s", type=float, default=900)
    ap.add_argument("--max-mb", type=float, default=16000)
    ap.add_argument("--label", default="now")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"), default=None,
                    help="print a markdown table of two surveys' labels (before -> after) and exit")
    args = ap.parse_args()
    if args.compare:
        from autoprune.io import results_dir

        base = results_dir() / "benchmarks"
        print(compare(base / f"zoo_survey-{args.compare[0]}.jsonl", base / f"zoo_survey-{args.compare[1]}.jsonl"))
        return
    if args.one:
        print(json.dumps(survey_one(args.one, args.plans, args.side, fixed_side=args.side is not None)))
        return
    from autoprune.io import results_dir

    out = results_dir() / "benchmarks"
    out.mkdir(parents=True, exist_ok=True)
    jsonl = out / f"zoo_survey-{args.label}.jsonl"
    done = {}
    if jsonl.exists():
        for line in jsonl.read_text().splitlines():
            row = json.loads(line)
            done[row["model"]] = row
    for ref in model_refs(args.models):
        if ref in done:
            continue
        row = run_child(ref, args.plans, args.side, args.timeout_s, args.max_mb)
        done[ref] = row
        with jsonl.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(f"{ref}: {row.get('status')} groups={row.get('groups')} whole={row.get('kept_whole')} "
              f"share={row.get('prunable_share')} failed={row.get('failed_plans')}/{row.get('plans')} "
              f"t={row.get('discover_check_s')}s peak={row.get('peak_mb')}MB {row.get('error', '')}", flush=True)
    write_table(list(done.values()), out / f"zoo_survey-{args.label}.md", args.label)


if __name__ == "__main__":
    main()
