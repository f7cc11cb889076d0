"""``autoprune targets``: the hardware targets, their runtimes, sparsity support and calibration status."""

from __future__ import annotations

import argparse
import json
import sys

from autoprune.commands.base import Command


def _device(p) -> str:
    cpu = p.device.cpu
    text = f"{cpu.cores}x {cpu.model} @ {cpu.clock_mhz:g} MHz"
    if p.device.gpu is not None:
        text += f" + {p.device.gpu.model.split(' (')[0]} @ {p.device.gpu.clock_mhz:g} MHz"
    return text


def _runtimes(p) -> str:
    parts = []
    for name, opts in p.runtimes.items():
        if name == "onnxruntime":
            providers = [x.replace("ExecutionProvider", "") for x in opts.get("providers", ())]
            parts.append(f"onnxruntime[{'+'.join(providers)}]")
        elif name == "tvm":
            t = opts.get("target", {})
            parts.append(f"tvm[{t.get('tag') or t.get('kind', '?')}]")
        else:
            parts.append(name)
    return ", ".join(parts)


def _status(p) -> str:
    c = p.calibration
    if c.status == "measured":
        return f"measured ({c.where}, {c.when})"
    return c.status


class TargetsCommand(Command):
    """List the hardware targets (``hw_profiles/*.yaml``)."""

    name = "targets"
    help = "list hardware targets: device, runtimes, sparsity support, calibration status"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--json", action="store_true", help="print the full profiles as JSON")

    def run(self, args: argparse.Namespace) -> int:
        from autoprune.hardware import list_profiles

        profiles = list_profiles()
        if args.json:
            json.dump([p.to_dict() for p in profiles], sys.stdout, indent=2)
            sys.stdout.write("\n")
            return 0
        header = ("target", "device", "runtimes", "sparsity", "calibration")
        rows = [
            (p.name, _device(p), _runtimes(p), ",".join(sorted(p.sparsity_support)), _status(p)) for p in profiles
        ]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        for row in [header, tuple("-" * w for w in widths), *rows]:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        return 0
