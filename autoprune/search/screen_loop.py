"""The screened search's loop: screening rounds (:mod:`autoprune.search.screen`) alternating with the backend's
full fine-tunes of what each round promoted, and its one-line summary."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

from autoprune.search.config import SearchConfig
from autoprune.search.screen import MAX_ROUNDS, ROUND_ATTR, ScreenRound, rounds_of, screen_round
from autoprune.search.space import SearchSpace


def screening_summary(study) -> str | None:
    """One line on what the study's screening did (None for a study that does not screen)."""
    rounds = [ScreenRound(study, n) for n in rounds_of(study)]
    if not rounds:
        return None
    r0 = sum(len(r.rung0) for r in rounds)
    r1 = sum(len(r.rung1) for r in rounds)
    steps = max((int(x.get("steps", 0)) for r in rounds for x in r.rung1.values()), default=0)
    promoted = sum(len(r.promoted or []) for r in rounds)
    secs = sum(sum(r.seconds.values()) for r in rounds)
    return (f"screening: {r0} plans scored at rung 0 (pruned, BatchNorm re-estimated), {r1} at rung 1 "
            f"({steps} fine-tuning steps), {promoted} promoted to a full fine-tune, in {len(rounds)} round(s) "
            f"and {secs / 60:.1f} min (study attributes {ROUND_ATTR}0..{rounds[-1].number})")


def run_screened(study, config: SearchConfig, storage, pipeline, space: SearchSpace, runner, *,
                 timeout_s: float | None = None, progress: bool = True, exclusive: bool = True,
                 log: Callable[[str], None] = print) -> dict[str, int]:
    """Alternate screening rounds and the backend's full fine-tunes until the study has ``config.trials``
    COMPLETE trials (or the timeout); return the backend's summed counts.

    Trials already enqueued (the dense anchor, a retried trial) run before a round is screened, so the
    dense reference is there first. Only a process that holds the study alone screens; a shared-study
    worker runs what is enqueued, then the sampler's trials. The backend runs only enqueued trials while
    screening goes on, so a promoted trial stopped early hands its slot to the next round, not to an
    unscreened draw of the sampler.
    """
    from optuna.trial import TrialState

    from autoprune.search.loop import COUNT_KEYS
    from autoprune.search.stops import catching

    counts = dict.fromkeys(COUNT_KEYS, 0)
    t0 = time.monotonic()
    deadline = None if timeout_s is None else t0 + timeout_s
    for _ in range(MAX_ROUNDS):
        states = [t.state for t in study.get_trials(deepcopy=False)]
        done, waiting, running = (states.count(s) for s in (TrialState.COMPLETE, TrialState.WAITING,
                                                             TrialState.RUNNING))
        if done >= config.trials or (deadline is not None and time.monotonic() > deadline):
            break
        promoted: list[int] = []
        # Enqueued trials first (the dense anchor, a retried trial), then the next round.
        if exclusive and not waiting and done + running < config.trials:
            existing = rounds_of(study)
            number = existing[-1] if existing and ScreenRound(study, existing[-1]).promoted is None else (
                existing[-1] + 1 if existing else 0)
            with catching():  # SIGTERM too stops a round as Ctrl-C does (it resumes where it stopped)
                promoted = screen_round(study, pipeline, space, config, number=number,
                                        slots=config.trials - done - waiting - running, deadline=deadline,
                                        progress=progress, log=log)
            waiting += len(promoted)
        enqueued_only = exclusive and bool(promoted or waiting)
        target = min(config.trials, done + waiting + running) if enqueued_only else config.trials
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        ran = runner.run(study, replace(config, trials=target), storage, pipeline, space, timeout_s=left,
                         progress=progress, exclusive=exclusive, enqueued_only=enqueued_only)
        for k in counts:
            counts[k] += ran.get(k, 0)
        if not any(ran.values()) and not promoted:
            break  # nothing promoted and nothing ran: the space is exhausted
    return counts


__all__ = ["run_screened", "screening_summary"]
