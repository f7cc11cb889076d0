"""Driving studies from optuna-dashboard: the study note, the request channel, and the server around them.

:mod:`autoprune.dashboard.note` writes each study's Markdown note (configuration,
front, exports, the equivalent CLI commands); :mod:`autoprune.dashboard.control`
turns forms submitted in optuna-dashboard into ``autoprune`` child processes;
:mod:`autoprune.dashboard.server` serves both, every write through one guard
(:mod:`~autoprune.dashboard.guard`: Host, Origin, the per-run token, a JSON body;
:mod:`~autoprune.dashboard.policy`: what needs ``--allow-edits``) on a threaded
server with read deadlines (:mod:`~autoprune.dashboard.httpd`).
"""
