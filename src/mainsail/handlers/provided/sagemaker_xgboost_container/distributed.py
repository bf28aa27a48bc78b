"""``sagemaker_xgboost_container.distributed`` as script-mode scripts use it (provided by mainsail).

Scripts import it at their top and call ``rabit_run`` from their training part. On one host (what
running the script here is) ``rabit_run`` runs the function as the container does when a single host
has data; several hosts need the container's Rabit tracker, which mainsail does not run.
"""

from __future__ import annotations

import logging
import socket
import sys
from collections.abc import Callable, Iterable
from typing import Any

logger = logging.getLogger(__name__)

LOCAL_HOSTNAME = "127.0.0.1"


def wait_hostname_resolution(sm_hosts: Iterable[str]) -> None:
    """Resolve each host name (the container retries for 15 minutes while a cluster boots)."""
    for host in sm_hosts:
        socket.gethostbyname(host)


def rabit_run(exec_fun: Callable[..., Any], args: dict[str, Any], include_in_training: bool, hosts: list[str],
              current_host: str, first_port: int | None = None, second_port: int | None = None,
              update_rabit_args: bool = False, **_: Any) -> None:
    """Run ``exec_fun(**args)``; with ``update_rabit_args`` it gets ``is_master=True``."""
    if not include_in_training:
        logger.warning("Host %s not being used for distributed training.", current_host)
        sys.exit(0)
    if len(set(hosts)) > 1:
        raise RuntimeError(f"distributed XGBoost training over {len(set(hosts))} hosts needs the SageMaker XGBoost "
                           "container's Rabit tracker, which mainsail does not run; train on one host")
    if update_rabit_args:
        args.update({"is_master": True})
    exec_fun(**args)
