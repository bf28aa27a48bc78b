"""Fault injection at the storage layer, for tests of what a full disk does (issue 18's seam).

``MAINSAIL_FAULT_DISK_FULL=BYTES`` in a process's environment arms it: once the bytes written through
the storage layer (S3 object bodies and parts, metadata sidecars, asynchronous results and transform
outputs written to local files) would pass ``BYTES``, that write and every larger one fails with
``OSError(ENOSPC)``, as a write to a full disk does; smaller writes that still fit succeed, as on a
disk with a little room left. Unset (always, outside tests) it costs one comparison per write.
Read once, when the process imports this module.
"""

from __future__ import annotations

import errno
import os
import threading

_LIMIT: int | None = int(os.environ["MAINSAIL_FAULT_DISK_FULL"]) if os.environ.get(
    "MAINSAIL_FAULT_DISK_FULL", "").isdigit() else None
_written = 0
_lock = threading.Lock()


def disk_write(nbytes: int) -> None:
    """Account for ``nbytes`` about to be written to disk; raise ``OSError(ENOSPC)`` when the armed
    fault says the disk is full."""
    global _written
    if _LIMIT is None:
        return
    with _lock:
        if _written + nbytes > _LIMIT:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        _written += nbytes
