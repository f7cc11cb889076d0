"""How much a screening round spends: its budget, sized so that screening stays a share of its wall time,
and the order it scores its first candidates in (:mod:`autoprune.search.screen` runs the round).

A round promotes ``slots`` candidates to full fine-tunes; its rung 0 and rung 1 may take ``budget_share /
(1 - budget_share)`` of their estimated fine-tuning time (:func:`~autoprune.search.promotion.round_budget`).
The estimate of one full fine-tune comes from the study's own promoted trials once it has some, and before
that from timing a few fine-tuning steps of the round's first candidate. With a time limit, the round also
promotes no more candidates than the rest of the limit can fine-tune, so a short budget still ends with
fine-tuned plans rather than a screen that never finished.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from autoprune.search.candidates import Candidate
from autoprune.search.objective import CANDIDATE_ERRORS, candidate_plan
from autoprune.search.promotion import round_budget

if TYPE_CHECKING:
    from autoprune.search.config import SearchConfig
    from autoprune.search.space import SearchSpace

#: The share of rung 0's seconds that exploring may take (refining the bands' best takes the rest).
EXPLORE_SHARE = 0.7
#: The sweeps' ratios in the order a round scores them, coarse to fine (a time limit cuts the fine ones).
COARSE_FIRST = (0.5, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6, 0.1, 0.9)


def explore_order(cands: Sequence[Candidate]) -> list[Candidate]:
    """The order a round scores its first candidates in: the sweeps at the three coarsest ratios (both
    baselines), then the other candidates and the finer sweeps alternately, so a time limit leaves a coarse
    sweep and some random plans rather than a fine sweep alone."""
    from itertools import zip_longest

    def ratio_rank(c: Candidate) -> int:
        tail = c.source.rsplit("-", 1)[-1]
        try:
            return COARSE_FIRST.index(float(tail))
        except ValueError:
            return len(COARSE_FIRST)

    sweeps = sorted((c for c in cands if c.source.startswith(("uniform-l1-", "global-l1-"))),
                    key=lambda c: (ratio_rank(c), c.index))
    swept = {c.index for c in sweeps}
    others = [c for c in cands if c.index not in swept]
    head, tail = sweeps[:6], sweeps[6:]
    return head + [c for pair in zip_longest(others, tail) for c in pair if c is not None]


def size_round(study, pipeline, space: SearchSpace, config: SearchConfig, rnd, earlier: Sequence[Any],
               first: Candidate, slots: int, deadline: float | None) -> dict[str, Any]:
    """The round's budget (:func:`~autoprune.search.promotion.round_budget`) and the estimate it was sized with.

    Args:
        study: The Optuna study.
        pipeline: The study's pipeline.
        space: The study's space.
        config: The study's configuration.
        rnd: The round (a :class:`~autoprune.search.screen.ScreenRound`, its first candidate scored).
        earlier: The study's earlier rounds (their ``rung1`` records and ``budget``).
        first: The round's first candidate (timed when the study has no promoted trial yet).
        slots: Fully fine-tuned trials the study still needs.
        deadline: The study's time limit (``time.monotonic()``), if any.
    """
    from dataclasses import asdict

    spec = space.screening
    steps1 = max(1, round(spec.rung1_fraction * pipeline.full_steps())) if spec.rung1_fraction > 0 else 0
    est = _estimate(study, pipeline, space, config, rnd, earlier, first, steps1) if spec.budget_share > 0 else {}
    left = None if deadline is None else deadline - time.monotonic()
    b = round_budget(slots_left=slots, per_round=spec.bands * spec.promote_per_band, share=spec.budget_share,
                     finetune_s=est.get("finetune_s"), rung1_plan_s=est.get("rung1_plan_s") if steps1 else None,
                     time_left_s=left)
    return {**asdict(b), **{k: v for k, v in est.items() if k != "finetune_s"},
            "time_left_s": None if left is None else round(left, 1)}


#: Fine-tuning steps timed to size a study's first round (at most a quarter of a full fine-tune).
PROBE_STEPS = 4


def _estimate(study, pipeline, space: SearchSpace, config: SearchConfig, rnd, earlier: Sequence[Any],
              first: Candidate, steps1: int) -> dict[str, Any]:
    """Seconds of one full fine-tune and of one rung-1 candidate: the medians of the study's promoted trials
    and earlier short fine-tunes where it has them, else timed here: the round's first candidate fine-tuned for
    1 and for 1 + :data:`PROBE_STEPS` steps after a warm-up, the difference giving a step's seconds without the
    prune, the evaluation and the one-time set-up (one timed probe of 4 steps estimated 70 s for a fine-tune
    whose real median was 35 s); ``{}`` where neither can be had."""
    from statistics import median

    from optuna.trial import TrialState

    done = [(t.datetime_complete - t.datetime_start).total_seconds()
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if "screen_round" in t.user_attrs and t.datetime_start and t.datetime_complete]
    short = [float(x["seconds"]) for r in earlier for x in r.rung1.values() if "seconds" in x]
    if done:  # a short fine-tune's seconds: earlier rounds' rung 1, else the last timed estimate
        timed = next((r.budget["rung1_plan_s"] for r in reversed(earlier) if (r.budget or {}).get("rung1_plan_s")),
                     None)
        return {"estimated_from": f"{len(done)} promoted trials", "finetune_s": round(median(done), 3),
                "rung1_plan_s": round(median(short), 3) if short else timed}
    r0 = rnd.rung0.get(first.index, {})
    if "seconds" not in r0:
        return {}
    k = max(1, min(PROBE_STEPS, pipeline.full_steps() // 4))
    kd = bool(first.merged().get("kd", space.distillation[0]))
    t0 = time.perf_counter()
    try:  # a warm-up (a teacher built, loaders started: once a study), then 1 step and 1 + k steps
        plan, _ = candidate_plan(pipeline, space, config, first.merged())
        _, one, more = [pipeline.screen(plan, steps=n, kd=kd, samples=space.screening.val_samples).seconds
                        for n in (1, 1, 1 + k)]
    except CANDIDATE_ERRORS:
        return {}
    finally:
        rnd.seconds["rung0_probe"] = rnd.seconds.get("rung0_probe", 0.0) + time.perf_counter() - t0
    step_s = max(more - one, 0.0) / k or more / (1 + k)
    full = pipeline.full_steps()
    return {"estimated_from": f"timed: 1 and {1 + k} fine-tuning steps of candidate {first.index}",
            "step_s": round(step_s, 4), "finetune_s": round(one + (full - 1) * step_s, 3),
            "rung1_plan_s": round(one + (steps1 - 1) * step_s, 3)}


__all__ = ["COARSE_FIRST", "EXPLORE_SHARE", "PROBE_STEPS", "explore_order", "size_round"]
