"""``autoprune pareto``: print and write the Pareto front of a study."""

from __future__ import annotations

import argparse

from autoprune.commands.base import Command


def add_study_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """``--study`` and ``--storage``."""
    parser.add_argument("--study", required=required, help="study name (see `autoprune search`)")
    parser.add_argument("--storage", default=None, help="Optuna storage URL (default: sqlite:///results/autoprune.db)")


def load_existing(args: argparse.Namespace):
    """Load an existing autoprune study and its stored configuration."""
    from autoprune.search.storage import default_storage_url
    from autoprune.search.study import open_study

    storage = args.storage or default_storage_url()
    study, config, _ = open_study(storage, args.study, None, {}, None)
    return study, config, storage


class ParetoCommand(Command):
    """Show a study's non-dominated trials and write pareto.csv/json/png/html."""

    name = "pareto"
    help = "print a study's Pareto front and write results/<study>/pareto.{csv,json,png,html}"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_study_args(parser)
        parser.add_argument("--measure", action="store_true",
                            help="time every front point here against the dense model (a study on `local`) and "
                                 "store the figures on the study; the table then shows them (`now ms`)")

    def run(self, args: argparse.Namespace) -> int:
        from optuna.trial import TrialState

        from autoprune.io import check_study_name
        from autoprune.search.report import provenance_line, stored_front_measured, table, write_front

        check_study_name(args.study)  # it names results/<study>/, where the front goes
        study, config, _ = load_existing(args)
        if args.measure:
            _measure(study, config)
        out = write_front(study, config)
        failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
        print(f"study {study.study_name!r}: {len(out['rows'])} completed, {len(failed)} failed; "
              f"target {config.target}; objectives {', '.join(config.objectives)}")
        for t in failed[-5:]:
            print(f"  failed trial {t.number}: {t.user_attrs.get('fail_reason', 'unknown reason')}")
        if not out["front"]:
            print("no feasible point: no completed trial meets the study's constraints")
            return 0
        print(table(out["front"], out["dense"], stored_front_measured(study)))
        print(provenance_line(out["rows"]))
        if out["hypervolume"] is not None:
            print(f"hypervolume (reference: 10 % beyond the worst completed trial): {out['hypervolume']:.6g}")
        print(f"written to {out['dir']}/pareto.{{csv,json,png,html}}")
        return 0


def _measure(study, config) -> None:
    """Time the front here (``--measure``) and print one line per front trial.

    Raises:
        ConfigError: The study's target is not this machine.
    """
    from autoprune.deploy.front_measure import measure_front

    done = measure_front(study, config, say=print)
    if not done:
        print("--measure: no front point to time")
        return
    m = done[0]
    print(f"front timed here against the dense model ({m.runtime}, {m.threads} thread(s), {m.host}, {m.measured_at}):")
    for m in done:
        print(f"  trial {m.trial:>4}: predicted {m.predicted_ms:.3f} ms, measured now {m.pruned_ms:.3f} ms, "
              f"dense now {m.dense_ms:.3f} ms; speedup predicted {m.predicted_speedup:.2f}x vs measured "
              f"{m.speedup:.2f}x; error {m.error_pct:+.1f} % (re-anchored to now {m.reanchored_error_pct:+.1f} %)"
              f"{' (noisy)' if m.noisy else ''}")
