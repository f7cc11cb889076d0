"""Screening: score many candidates cheaply, fine-tune only those that can reach the front.

Successive halving over fine-tuning budgets, per latency band, in rounds. A round of a study whose space
has ``screening`` (:class:`~autoprune.search.space.ScreeningSpec`):

1. **Candidates.** The first round screens the one-line baselines themselves: uniform-L1 and global-L1
   channel plans at :data:`SWEEP_RATIOS` (so the search can only beat them by selection and refinement,
   never lose to them by not trying them), and random plans of the space, each at a random overall ratio
   with per-layer deviations. Every round then refines around the best of each band: per-layer
   deviations of the round's best screened plans (the first round), or of the study's best fine-tuned
   trials (later rounds), with a few fresh random plans.
2. **Rung 0.** Each candidate is pruned, its BatchNorm statistics re-estimated (EagleEye), its accuracy
   evaluated on a validation subset, and its latency predicted by the cost model, which knows it before
   any training (:meth:`~autoprune.pipeline.Pipeline.screen`).
3. **Bands.** The speed range, from the fastest screened plan to the dense model, is cut into
   predicted-latency bands evenly spaced in speedup (fixed by the first round, so every round ranks within
   the same bands).
4. **Rung 1.** A shortlist is fine-tuned for a fraction of a full fine-tune and evaluated again: right
   after pruning, an aggressive plan's accuracy says little about its fine-tuned one; a few steps say more.
   The first round shortlists the best of each band (non-dominated in accuracy and latency first, then by
   accuracy); later rounds twice their slots, by contribution (below). A plan is short-fine-tuned once.
5. **Promotion.** The first round (only the dense model fine-tuned yet) enqueues the best of each band at
   rung 1, one per band but the slowest (the dense model covers that end of the front), so the front
   covers the speed range the way a sweep does and the next rounds have a curve to fit. Once
   :data:`MIN_FINISHED` trials are fine-tuned, a round promotes by
   contribution to the front (:mod:`autoprune.search.contribution`): every candidate screened so far, of this
   round or an earlier one, gets an expected fine-tuned accuracy from the study's own trials and its rung-0
   score; those whose expected points add the most hypervolume are shortlisted for rung 1, and those whose
   rung-1 scores add the most (over every plan rung 1 has scored) are enqueued. The backend fine-tunes them
   fully (with early stopping) as any trial.

Every rung is stored in the study, one user attribute per round (``autoprune.screen.round<N>``: the
bands, each candidate's parameters, source and rung scores, the promoted indices), written as the round
goes, so a killed study resumes its round without re-scoring what it scored. A promoted trial carries its
history as user attributes (:data:`HISTORY_KEYS`); a screened-only candidate is never a trial, so it
never appears on the front. Promotion is a pure function of the stored scores: deterministic for a seed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from autoprune.errors import AutopruneError
from autoprune.search.candidates import (
    SWEEP_RATIOS,
    Candidate,
    random_candidates,
    refine_candidates,
    sweep_candidates,
)
from autoprune.search.config import ACCURACY, OBJECTIVES, SearchConfig
from autoprune.search.contribution import FRONT_MARGIN, Finished, promote_by_contribution
from autoprune.search.objective import CANDIDATE_ERRORS, candidate_plan, failure_reason
from autoprune.search.promotion import RoundBudget, Scored, band_edges, band_of, plan_digest, promote
from autoprune.search.screen_budget import EXPLORE_SHARE, explore_order, size_round
from autoprune.search.space import SearchSpace, run_params

#: Study user attribute of round N: ``f"{ROUND_ATTR}{N}"``.
ROUND_ATTR = "autoprune.screen.round"
#: User attributes of a promoted trial: where it came from and what it scored at each rung.
HISTORY_KEYS = ("screen_round", "screen_index", "screen_band", "screen_source", "rung0_accuracy",
                "rung1_accuracy", "screen_latency_ms", "screen_plan_key", "screen_promoted_by")
#: The trial user attributes of the accuracy and latency objectives.
ACC, LAT = OBJECTIVES[ACCURACY][1], OBJECTIVES["latency"][1]
#: Screening stops after this many rounds in one run (a guard; a round promotes at least one trial; see
#: :func:`autoprune.search.screen_loop.run_screened`).
MAX_ROUNDS = 50
#: Rung-0 records are written to the study after every this many candidates.
FLUSH_EVERY = 4


# -------------------------------------------------------------------------------------------- a round
class ScreenRound:
    """One round's stored state (the study user attribute ``autoprune.screen.round<N>``), read and written.

    Attributes:
        study: The Optuna study.
        number: The round's number.
        edges: The latency bands' edges (ms), once known.
        rung0, rung1: Candidate index → its record at that rung.
        promoted: The indices enqueued as trials (``None`` while the round is unfinished).
        seconds: Wall time per phase of the round.
        budget: What the round may spend (:class:`~autoprune.search.promotion.RoundBudget`'s fields and the
            estimate it was sized with), fixed when the round starts so a resume keeps it.
    """

    def __init__(self, study, number: int) -> None:
        self.study = study
        self.number = number
        raw = study.user_attrs.get(f"{ROUND_ATTR}{number}") or {}
        self.edges: tuple[float, ...] | None = tuple(raw["edges"]) if raw.get("edges") else None
        self.rung0: dict[int, dict[str, Any]] = {int(r["i"]): r for r in raw.get("rung0", [])}
        self.rung1: dict[int, dict[str, Any]] = {int(r["i"]): r for r in raw.get("rung1", [])}
        self.promoted: list[int] | None = raw.get("promoted")
        self.seconds: dict[str, float] = dict(raw.get("seconds", {}))
        self.budget: dict[str, Any] | None = raw.get("budget")

    def save(self) -> None:
        """Write the round to the study (the whole record: one attribute per round)."""
        self.study.set_user_attr(f"{ROUND_ATTR}{self.number}", {
            "edges": list(self.edges) if self.edges else None,
            "rung0": [self.rung0[i] for i in sorted(self.rung0)],
            "rung1": [self.rung1[i] for i in sorted(self.rung1)],
            "promoted": self.promoted, "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
            "budget": self.budget,
        })

    def scored(self, rung: int) -> list[Scored]:
        """The rung's successful scores (rung 1 keeps rung 0's latency and plan)."""
        rows, first = (self.rung0 if rung == 0 else self.rung1), self.rung0
        return [Scored(i, float(r["val_accuracy"]), float(first[i]["predicted_ms"]), first[i].get("plan_key", ""))
                for i, r in sorted(rows.items()) if "val_accuracy" in r and "predicted_ms" in first.get(i, {})]


def rounds_of(study) -> list[int]:
    """The numbers of the study's screening rounds so far, ascending."""
    return sorted(int(k[len(ROUND_ATTR):]) for k in study.user_attrs if k.startswith(ROUND_ATTR)
                  and k[len(ROUND_ATTR):].isdigit())


def _trial_plan_keys(study) -> set[str]:
    """Digests of the plans the study's trials ran or will run (finished records, and promoted candidates)."""
    from optuna.trial import TrialState

    keys = set()
    for t in study.get_trials(deepcopy=False):
        if isinstance(t.user_attrs.get("plan"), dict) and t.state == TrialState.COMPLETE:
            keys.add(plan_digest(t.user_attrs["plan"]))
        if t.user_attrs.get("screen_plan_key"):
            keys.add(t.user_attrs["screen_plan_key"])
    return keys


def _best_trials_per_band(study, edges: Sequence[float], per_band: int) -> list[tuple[int, dict]]:
    """``(trial number, the params it ran with)`` of the best fine-tuned trials of each band (:func:`rank`) that
    can be refined (not the dense anchor, not a global threshold)."""
    from optuna.trial import TrialState

    scored, params = [], {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        a, ran = t.user_attrs, run_params(t)
        if ACC in a and LAT in a and a.get("anchor") != "dense" and ran.get("allocation") != "global":
            scored.append(Scored(t.number, float(a[ACC]), float(a[LAT])))
            params[t.number] = ran
    return [(n, params[n]) for n in promote(scored, edges, per_band)]


#: Fine-tuned trials (the dense anchor among them) a study needs before it promotes by contribution to the front.
MIN_FINISHED = 3


def _finished(study) -> tuple[dict[str, list[Finished]], float]:
    """The study's fine-tuned trials as promotion reads them, with their rung-0 and with their rung-1 score
    (``{"rung0_accuracy": [...], "rung1_accuracy": [...]}``), and the dense anchor's accuracy (else the best)."""
    from optuna.trial import TrialState

    out: dict[str, list[Finished]] = {"rung0_accuracy": [], "rung1_accuracy": []}
    dense = None
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        a = t.user_attrs
        if ACC in a and LAT in a and float(a[LAT]) > 0:
            secs = (t.datetime_complete - t.datetime_start).total_seconds() if (
                t.datetime_start and t.datetime_complete and a.get("anchor") != "dense") else None
            for key, rows in out.items():
                score = a.get(key)
                rows.append(Finished(float(a[ACC]), float(a[LAT]), None if score is None else float(score), secs))
            if a.get("anchor") == "dense":
                dense = float(a[ACC])
    rows = out["rung0_accuracy"]
    return out, dense if dense is not None else max((f.accuracy for f in rows), default=0.0)


def _contributions(study, rnd: ScreenRound, finished: Sequence[Finished], dense_ms: float, reference: float,
                   limit: int, taken: set[str]) -> list[tuple[int, int]]:
    """``(round, index)`` of the candidates of this and every earlier round to promote by contribution."""
    records = {(n, i): r for n in rounds_of(study) if n < rnd.number for i, r in ScreenRound(study, n).rung0.items()}
    records.update({(rnd.number, i): r for i, r in rnd.rung0.items()})
    keys = sorted(k for k, r in records.items() if "val_accuracy" in r and "predicted_ms" in r)
    picks = promote_by_contribution(
        finished, [(j, float(records[k]["val_accuracy"]), float(records[k]["predicted_ms"]),
                    records[k].get("plan_key", "")) for j, k in enumerate(keys)],
        dense_ms, reference, limit, skip_plans=sorted(taken))
    return [(keys[j][0], keys[j][1]) for j in picks]


def _carry(rnd: ScreenRound, by_index: dict[int, Candidate], picks: Sequence[tuple[int, int]]) -> list[int]:
    """This round's indices of ``picks``: an earlier round's candidate is copied into this round (its rung-0
    record, marked ``carried_from``, and its rung-1 record if it has one), not re-scored; a plan this round
    already holds (its own, or carried before a resume) is not copied again."""
    out = []
    held = {r.get("plan_key"): j for j, r in sorted(rnd.rung0.items(), reverse=True) if r.get("plan_key")}
    for n, i in picks:
        if n == rnd.number:
            out.append(i)
            continue
        old = ScreenRound(rnd.study, n)
        rec = old.rung0[i]
        if rec.get("plan_key") in held:
            out.append(held[rec["plan_key"]])
            continue
        j = max((*rnd.rung0, *by_index), default=-1) + 1
        rnd.rung0[j] = {**rec, "i": j, "carried_from": [n, i]}
        if "val_accuracy" in old.rung1.get(i, {}):
            rnd.rung1[j] = {**old.rung1[i], "i": j, "carried_from": [n, i]}
        by_index[j] = Candidate(j, str(rec.get("source", "random")), dict(rec.get("params", {})),
                                dict(rec.get("fixed", {})))
        held[rec.get("plan_key")] = j
        out.append(j)
    return out


def _rung1_pool(study, rnd: ScreenRound) -> dict[str, tuple[tuple[int, int], float, float]]:
    """Plan digest -> ``((round, index), rung-1 accuracy, predicted ms)`` of every plan given a short fine-tune
    in this round or an earlier one (its first record): successive halving keeps what rung 1 learned."""
    out: dict[str, tuple[tuple[int, int], float, float]] = {}
    for n in [*(m for m in rounds_of(study) if m < rnd.number), rnd.number]:
        r = rnd if n == rnd.number else ScreenRound(study, n)
        for i, x in sorted(r.rung1.items()):
            key = r.rung0.get(i, {}).get("plan_key", "")
            if key and key not in out and "val_accuracy" in x and "predicted_ms" in r.rung0[i]:
                out[key] = ((n, i), float(x["val_accuracy"]), float(r.rung0[i]["predicted_ms"]))
    return out


def screen_round(study, pipeline, space: SearchSpace, config: SearchConfig, *, number: int, slots: int,
                 deadline: float | None = None, progress: bool = True, log: Callable[[str], None] = print
                 ) -> list[int]:
    """Run (or resume) screening round ``number`` and enqueue its promoted candidates; return their indices.

    Args:
        study: The Optuna study.
        pipeline: The study's pipeline.
        space: The study's space (its ``screening`` is not None).
        config: The study's configuration.
        number: The round.
        slots: Fully fine-tuned trials still to fill; at most this many are promoted.
        deadline: A ``time.monotonic()`` after which no more candidates are scored (what is scored is promoted).
        progress: Show a progress bar.
        log: Where the round's one-line summary goes.
    """
    from tqdm import tqdm

    spec = space.screening
    rnd = ScreenRound(study, number)
    if rnd.promoted is not None:
        return list(rnd.promoted)
    groups = pipeline.groups
    rng = np.random.default_rng([int(config.seed), int(number)])
    taken = _trial_plan_keys(study)
    dense_ms = float(pipeline.cost_model.predict(pipeline.dense).latency_ms)

    def over() -> bool:
        return deadline is not None and time.monotonic() > deadline

    def unfinished() -> list[int]:  # the time budget ended inside the round: a resume continues it
        log(f"screening round {number}: stopped at the time budget after {len(rnd.rung0)} plans at rung 0 and "
            f"{len(rnd.rung1)} at rung 1; resuming the study continues the round")
        return []

    def score(cands: Sequence[Candidate], rung: int, steps: int, what: str, box_s: float | None = None,
              also: Sequence[str] = ()) -> None:
        """Score ``cands`` at ``rung`` until the time limit, or until this phase (and ``also``'s) took ``box_s``."""
        store = rnd.rung0 if rung == 0 else rnd.rung1
        todo = [c for c in cands if c.index not in store]
        t0 = time.perf_counter()
        before = sum(rnd.seconds.get(k, 0.0) for k in (f"rung{rung}_{what}", *also))
        bar = tqdm(total=len(cands), initial=len(cands) - len(todo), desc=f"screen r{number} {what}",
                   unit="plan", disable=not progress, leave=False)
        try:
            for k, c in enumerate(todo):
                if over() or (box_s is not None and before + time.perf_counter() - t0 > box_s):
                    break
                rec: dict[str, Any] = {"i": c.index}
                if rung == 0:
                    rec.update(source=c.source, params=dict(c.params), fixed=dict(c.fixed))
                try:
                    plan, _ = candidate_plan(pipeline, space, config, c.merged())
                    s = pipeline.screen(plan, steps=steps, kd=bool(c.merged().get("kd", space.distillation[0]))
                                        and steps > 0, samples=spec.val_samples, bn_batches=spec.bn_batches)
                except CANDIDATE_ERRORS as exc:
                    rec["error"] = failure_reason(exc)
                else:
                    rec.update(val_accuracy=s.accuracy, samples=s.samples, steps=s.steps, seconds=s.seconds)
                    if rung == 0:
                        rec.update(predicted_ms=s.latency_ms, plan_key=plan_digest(s.plan))
                store[c.index] = rec
                bar.update(1)
                if rung == 1 or (k + 1) % FLUSH_EVERY == 0:
                    rnd.save()
        finally:
            bar.close()
            rnd.seconds[f"rung{rung}_{what}"] = rnd.seconds.get(f"rung{rung}_{what}", 0.0) + time.perf_counter() - t0
            rnd.save()

    # Rung 0: the first candidates, then the bands, then refinements of each band's best.
    first = (sweep_candidates(space, groups) + random_candidates(space, groups, rng, spec.random, len(SWEEP_RATIOS) * 2)
             if number == 0 else random_candidates(space, groups, rng, max(1, spec.random // 4)))
    order = explore_order(first)
    score(order[:1], 0, 0, "explore")  # the first plan, then the round's budget (which may time it), then the rest
    if rnd.budget is None and not over():
        earlier = [ScreenRound(study, n) for n in rounds_of(study) if n < number]
        rnd.budget = size_round(study, pipeline, space, config, rnd, earlier, order[0], slots, deadline)
        rnd.save()
    budget = RoundBudget(**{k: (rnd.budget or {}).get(k) for k in ("rung0_s", "rung1_plans", "finetune_s")},
                         slots=int((rnd.budget or {}).get("slots", max(0, slots))))
    score(order, 0, 0, "explore", None if budget.rung0_s is None else EXPLORE_SHARE * budget.rung0_s)
    if over():
        return unfinished()
    if rnd.edges is None:
        if number == 0:
            lat = [s.latency_ms for s in rnd.scored(0)]
            if not lat:
                raise AutopruneError("screening: every candidate of the first round failed; see "
                                     f"the study attribute {ROUND_ATTR}0 for the reasons")
            rnd.edges = band_edges(min(lat), dense_ms, spec.bands)
        else:
            rnd.edges = ScreenRound(study, 0).edges or band_edges(min(s.latency_ms for s in rnd.scored(0)),
                                                                  dense_ms, spec.bands)
        rnd.save()
    edges = rnd.edges
    if number == 0:  # a global threshold's per-layer ratios are not parameters: refine the best of the others
        refinable = [s for s in rnd.scored(0) if rnd.rung0[s.index]["fixed"].get("allocation") != "global"]
        parents = [(f"r0#{i}", {**rnd.rung0[i]["params"], **rnd.rung0[i]["fixed"]})
                   for i in promote(refinable, edges, spec.refine_parents)]
    else:
        parents = [(f"trial{n}", p) for n, p in _best_trials_per_band(study, edges, spec.refine_parents)]
    children: list[Candidate] = []
    for name, params in parents:
        children += refine_candidates(space, groups, params, rng, spec.refine_children, spec.refine_sigma,
                                      f"refine:{name}", start=len(first) + len(children))
    score(children, 0, 0, "refine", budget.rung0_s, also=("rung0_explore",))
    by_index = {c.index: c for c in (*first, *children)}

    # Rung 1: a short fine-tune of each band's best (as many as the budget buys), then promotion.
    by_rung, dense_acc = _finished(study)
    finished = by_rung["rung0_accuracy"]
    by_contribution = len(finished) >= MIN_FINISHED
    first_picks = number == 0 and not by_contribution  # only the dense model fine-tuned: one per band but the
    slowest = edges[-2] if first_picks and len(edges) >= 3 else float("inf")  # slowest, which dense covers

    def eligible(rows: list[Scored]) -> list[Scored]:
        return [s for s in rows if s.latency_ms < slowest] or rows

    scored0 = eligible(rnd.scored(0))
    limit = max(0, min(slots, budget.slots))
    per_band = 1 if first_picks else spec.promote_per_band
    if first_picks:  # later rounds fit the study's curve to these
        limit = min(limit, max(1, spec.bands - 1))
    elif by_contribution:  # a few at a time, so that the next round's curve knows what these gave
        limit = min(limit, spec.bands)
    steps = max(1, round(spec.rung1_fraction * pipeline.full_steps())) if spec.rung1_fraction > 0 else 0
    if steps and budget.rung1_plans != 0 and not by_contribution:
        picks = promote(scored0, edges, spec.rung1_per_band, skip_plans=sorted(taken), limit=budget.rung1_plans)
        score([by_index[i] for i in picks], 1, steps, "short-finetune")
    elif steps and first_picks:  # no room for a wider rung 1: the picks alone, so that later rounds can learn
        picks = promote(scored0, edges, 1, skip_plans=sorted(taken), limit=limit)  # what a short fine-tune says
        score([by_index[i] for i in picks], 1, steps, "short-finetune")
    if over():
        return unfinished()
    promoted: list[int] = []
    if by_contribution:  # the study's own fine-tuned trials say where the front gains most
        ref = config.min_accuracy if config.min_accuracy is not None else dense_acc - FRONT_MARGIN
        judged = set(_rung1_pool(study, rnd))  # plans a short fine-tune already scored are ranked by that score
        shortlist = _carry(rnd, by_index, _contributions(study, rnd, finished, dense_ms, ref,
                                                         (2 if steps else 1) * limit, taken | judged))
        if steps:  # a short fine-tune of twice the slots; its accuracy ranks fast plans, which rung 0 cannot
            score([by_index[i] for i in shortlist], 1, steps, "short-finetune", budget.rung0_s)
            if over():
                return unfinished()
            pool = sorted(_rung1_pool(study, rnd).items(), key=lambda kv: kv[1][0])
            picks = promote_by_contribution(by_rung["rung1_accuracy"],
                                            [(j, acc, ms, key) for j, (key, (_, acc, ms)) in enumerate(pool)],
                                            dense_ms, ref, limit, skip_plans=sorted(taken))
            promoted = _carry(rnd, by_index, [pool[j][1][0] for j in picks])
            promoted += [i for i in shortlist if i not in promoted and i not in rnd.rung1][:limit - len(promoted)]
        else:
            promoted = shortlist[:limit]
    by_front = set(promoted)
    seen = taken | {rnd.rung0[i].get("plan_key", "") for i in promoted}
    if by_contribution:  # what adds nothing is left for the next round, with a curve that knows more
        limit = max(len(promoted), 1) if limit else 0  # (but one: a round promoting none ends the search)
    else:
        promoted += promote(eligible(rnd.scored(1)), edges, per_band, skip_plans=sorted(seen),
                            limit=limit - len(promoted))
    if len(promoted) < limit:  # fewer short fine-tunes than slots (none, or failed): the rest by rung 0
        seen |= {rnd.rung0[i].get("plan_key", "") for i in (*rnd.rung1, *promoted)}
        promoted += promote(scored0, edges, per_band, skip_plans=sorted(seen), limit=limit - len(promoted))
    for i in promoted:
        c, r0 = by_index[i], rnd.rung0[i]
        history = {"screen_round": number, "screen_index": i, "screen_band": band_of(r0["predicted_ms"], edges),
                   "screen_source": c.source, "rung0_accuracy": r0["val_accuracy"],
                   "rung1_accuracy": rnd.rung1.get(i, {}).get("val_accuracy"), "screen_latency_ms": r0["predicted_ms"],
                   "screen_plan_key": r0.get("plan_key", ""),
                   "screen_promoted_by": "contribution" if i in by_front else "band"}
        fixed = {"anchor_params": dict(c.fixed)} if c.fixed else {}
        study.enqueue_trial(dict(c.params), user_attrs={**history, **fixed}, skip_if_exists=False)
    rnd.promoted = promoted
    rnd.save()
    secs = " + ".join(f"{k} {v:.0f} s" for k, v in rnd.seconds.items())
    sized = (f"; sized for a {budget.finetune_s:.0f} s full fine-tune, {spec.budget_share:.0%} screening"
             if budget.rung0_s is not None and budget.finetune_s else "")
    log(f"screening round {number}: {len(rnd.rung0)} plans at rung 0, {len(rnd.rung1)} at rung 1, "
        f"{len(promoted)} promoted to a full fine-tune ({secs}{sized})")
    return promoted


__all__ = ["HISTORY_KEYS", "MAX_ROUNDS", "MIN_FINISHED", "ROUND_ATTR", "ScreenRound", "rounds_of", "screen_round"]
