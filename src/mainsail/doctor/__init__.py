"""``mainsail doctor MODEL``: check a model directory or ``model.tar.gz`` before it is deployed.

Every check is a small function that appends ``Finding`` objects (:mod:`mainsail.doctor.findings`);
``diagnose`` (:mod:`mainsail.doctor.diagnose`) runs them all, so every problem is reported at once,
and returns the list: the archive, layout, requirements and script (:mod:`~mainsail.doctor.checks`),
a built-in handler's files (:mod:`~mainsail.doctor.artifacts`), SageMaker's limits
(:mod:`~mainsail.doctor.limits`), then the model loaded by its real handler and a sample sent through
the serving app's ``POST /invocations`` (:mod:`~mainsail.doctor.trial`). ``exit_code``, ``to_json``
and ``render`` (:mod:`~mainsail.doctor.report`) report the findings. docs/doctor.md lists every check,
its level and its fix. This package only re-exports.
"""

from __future__ import annotations

from mainsail.doctor.diagnose import diagnose
from mainsail.doctor.findings import Finding, Level, State
from mainsail.doctor.report import exit_code, render, to_json

__all__ = ["Finding", "Level", "State", "diagnose", "exit_code", "render", "to_json"]
