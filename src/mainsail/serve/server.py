"""``mainsail serve`` as a library call: prepare the model directory, then supervise workers."""

from __future__ import annotations

import logging

from mainsail.connections import raise_open_files_limit
from mainsail.serve.model_dir import prepare_model
from mainsail.serve.requirements import missing_requirements, prepare_requirements
from mainsail.serve.workers import Supervisor
from mainsail.settings import ServeSettings

logger = logging.getLogger(__name__)


def run_server(settings: ServeSettings) -> int:
    """Serve until SIGTERM/SIGINT; returns the process exit code."""
    raise_open_files_limit()  # one descriptor per connection, in every worker (they inherit it)
    prepared = prepare_model(settings)
    first_paths: list[str] = []
    if prepared.code_dir is not None:
        requirements = prepared.code_dir / "requirements.txt"
        if requirements.is_file():
            if settings.install_requirements:
                first_paths = prepare_requirements(requirements, settings.home / "requirements").paths
            else:
                missing = missing_requirements(requirements)
                if missing:
                    logger.warning("%s is not satisfied (not installing, as asked): %s",
                                   requirements, "; ".join(missing))
    return Supervisor(settings, prepared, first_paths).run()
