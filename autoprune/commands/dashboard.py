"""``autoprune dashboard``: serve a study storage with optuna-dashboard (and its artifacts)."""

from __future__ import annotations

import argparse

from autoprune.commands.base import Command
from autoprune.commands.common import positive_int


class DashboardCommand(Command):
    """Watch studies live in optuna-dashboard; front plans and exports are attached as artifacts."""

    name = "dashboard"
    help = "serve the study storage in optuna-dashboard (loopback by default)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--study", default=None, help="check that this study exists and print its URL")
        parser.add_argument("--storage", default=None,
                            help="Optuna storage URL (default: sqlite:///results/autoprune.db)")
        parser.add_argument("--host", default="127.0.0.1", help="bind address (default: 127.0.0.1)")
        parser.add_argument("--port", type=positive_int, default=8080, help="port (default: 8080)")

    def run(self, args: argparse.Namespace) -> int:
        from optuna_dashboard import run_server

        from autoprune.search.runner import artifact_store
        from autoprune.search.storage import default_storage_url, make_storage, redact_url

        url = args.storage or default_storage_url()
        storage = make_storage(url)
        path = "/dashboard/"
        if args.study is not None:
            from autoprune.search.study import open_study

            study, _, _ = open_study(url, args.study, None, {}, None)
            path = f"/dashboard/studies/{study._study_id}"
        if args.host not in ("127.0.0.1", "localhost", "::1"):
            print(f"warning: serving on {args.host}: anyone who can reach it can read and edit the studies")
        print(f"optuna-dashboard for {redact_url(url)} at http://{args.host}:{args.port}{path} (Ctrl-C stops)")
        run_server(storage, host=args.host, port=args.port, artifact_store=artifact_store(url))
        return 0
