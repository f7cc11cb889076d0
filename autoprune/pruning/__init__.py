"""The pruning engine: a plan in; a pruned, fine-tuned, evaluated, exported model out.

Typical use::

    groups = check_groups(model, example_input, discover_groups(model, example_input)).groups
    plan = snap_plan(PruningPlan.uniform(groups, "channel", 0.5, criterion="l1"), groups)
    pruned = prune_model(model, plan, example_input, calib_loader=loader)
    finetune(pruned.module, train_loader, FinetuneConfig(steps=200), teacher=model)
    ev = evaluate(pruned, test_loader, example_input)
    res = export_onnx(pruned, "model.onnx", example_input)
"""

from autoprune.pruning.apply import PrunedModel, channel_importance, kept_count, prune_model, safe_deepcopy
from autoprune.pruning.check import GroupCheck, check_groups
from autoprune.pruning.criteria import CRITERIA, Criterion, get_criterion
from autoprune.pruning.evaluate import Evaluation, count_macs, evaluate, size_report
from autoprune.pruning.export import ExportResult, export_onnx
from autoprune.pruning.finetune import (
    FinetuneConfig,
    FinetuneDivergedError,
    FinetuneResult,
    finetune,
    recalibrate_bn,
    regularization_loss,
)
from autoprune.pruning.groups import PrunableGroup, discover_groups
from autoprune.pruning.plan import STRUCTURES, GroupPlan, PlanSettings, PruningPlan, parse_nm
from autoprune.pruning.snap import snap_plan

__all__ = [
    "CRITERIA",
    "STRUCTURES",
    "Criterion",
    "Evaluation",
    "ExportResult",
    "FinetuneConfig",
    "FinetuneDivergedError",
    "FinetuneResult",
    "GroupCheck",
    "GroupPlan",
    "PlanSettings",
    "PrunableGroup",
    "PrunedModel",
    "PruningPlan",
    "channel_importance",
    "check_groups",
    "count_macs",
    "discover_groups",
    "evaluate",
    "export_onnx",
    "finetune",
    "get_criterion",
    "kept_count",
    "parse_nm",
    "prune_model",
    "recalibrate_bn",
    "regularization_loss",
    "safe_deepcopy",
    "size_report",
    "snap_plan",
]
