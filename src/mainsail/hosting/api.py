"""The hosting API's operations by ``X-Amz-Target`` name, and DescribeEndpoint's short wait for a settling
endpoint."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from starlette.concurrency import run_in_threadpool

from mainsail.hosting import endpoints, models
from mainsail.hosting.calls import Call, Operation

OPERATIONS: dict[str, Operation] = {**models.OPERATIONS, **endpoints.OPERATIONS}


async def settle(call: Call, result: dict[str, Any], seconds: float) -> dict[str, Any]:
    """Re-describe a Creating/Updating/Deleting endpoint for up to ``seconds`` so that a client's first
    poll (boto3's waiters poll at once, then sleep 30 s) already sees where it lands. Waits on the
    event loop, holding no thread; a deleted endpoint raises ValidationException here."""
    deadline = time.monotonic() + seconds
    while result.get("EndpointStatus") in endpoints.SETTLING and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        result = await run_in_threadpool(endpoints.describe_endpoint, call)
    return result
