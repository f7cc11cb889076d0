"""Driving studies from optuna-dashboard: the study note and the request channel.

:mod:`autoprune.dashboard.note` writes each study's Markdown note (configuration,
front, exports, the equivalent CLI commands); :mod:`autoprune.dashboard.control`
turns forms submitted in optuna-dashboard into ``autoprune`` child processes.
"""
