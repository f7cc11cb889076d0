"""``autoprune dashboard``: optuna-dashboard plus the controller that carries out its requests.

Studies are watched live (objectives, user attributes, plan and export artifacts), and
driven from each study's control form: resume, stop, export, verify (see
:mod:`autoprune.dashboard.control`).
"""

from __future__ import annotations

import argparse

from autoprune.commands.base import Command
from autoprune.commands.common import positive_int


class DashboardCommand(Command):
    """Watch and drive studies in optuna-dashboard (loopback by default)."""

    name = "dashboard"
    help = "serve the study storage in optuna-dashboard, with a form per study to resume, stop, export, verify"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--study", default=None, help="check that this study exists and print its URL")
        parser.add_argument("--storage", default=None,
                            help="Optuna storage URL (default: sqlite:///results/autoprune.db)")
        parser.add_argument("--host", default="127.0.0.1",
                            help="bind address (default: 127.0.0.1; another address needs --allow-remote)")
        parser.add_argument("--allow-remote", action="store_true",
                            help="allow a non-loopback --host and any Host header (writes still need the token "
                            "link printed at start, sent in clear text over http)")
        parser.add_argument("--allow-edits", action="store_true",
                            help="let the dashboard's UI delete, rename and create studies and finish (tell) or "
                            "edit the trials of autoprune studies (refused by default)")
        parser.add_argument("--port", type=positive_int, default=8080, help="port (default: 8080)")
        parser.add_argument("--no-control", action="store_true",
                            help="plain optuna-dashboard: no control studies, no requests")

    def run(self, args: argparse.Namespace) -> int:
        from autoprune.dashboard.guard import new_token
        from autoprune.dashboard.server import check_host, serve
        from autoprune.search.storage import default_storage_url, get_storage, make_storage, redact_url

        warning = check_host(args.host, args.allow_remote)
        url = args.storage or default_storage_url()
        storage = make_storage(url)
        path = "/dashboard/"
        if args.study is not None:
            from autoprune.search.study import open_study

            study, _, _ = open_study(url, args.study, None, {}, None)
            path = f"/dashboard/studies/{study._study_id}"
        if warning:
            print(warning)
        if args.allow_edits:
            print("note: --allow-edits: the dashboard's UI may delete, rename and create studies and finish or "
                  "edit the trials of autoprune studies")
        shown = f"[{args.host}]" if ":" in args.host else args.host
        token = new_token()

        def ready(controller) -> None:
            what = "with the control forms" if controller is not None else "watch-only (--no-control)"
            print(f"optuna-dashboard for {redact_url(url)} at http://{shown}:{args.port}{path}?token={token} {what} "
                  "(Ctrl-C stops; open this link: the dashboard's forms need the token it sets)", flush=True)

        return serve(storage, url, host=args.host, port=args.port, artifact_store=get_storage(url).artifacts,
                     control=not args.no_control, ready=ready, token=token, allow_remote=args.allow_remote,
                     allow_edits=args.allow_edits)
