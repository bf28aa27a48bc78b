"""Safe extraction of model archives (``model.tar.gz``, ``sourcedir.tar.gz``), shared by both planes.

:func:`safe_extract` refuses anything that could land outside the target (absolute names, ``..``,
links leaving it, device files) and bounds the extracted size and member count.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

from mainsail.errors import InvalidModelArchive

MAX_ARCHIVE_BYTES = 64 * 1024**3
MAX_ARCHIVE_MEMBERS = 200_000


def safe_extract(archive: Path, dest: Path, *, max_bytes: int = MAX_ARCHIVE_BYTES,
                 max_members: int = MAX_ARCHIVE_MEMBERS) -> None:
    """Extract ``archive`` into ``dest``, refusing anything that could land outside it."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            total = 0
            members = 0
            for member in tar:
                members += 1
                total += max(member.size, 0)
                if members > max_members:
                    raise InvalidModelArchive(f"{archive.name} holds more than {max_members} members")
                if total > max_bytes:
                    raise InvalidModelArchive(
                        f"{archive.name} would extract to more than {max_bytes} bytes"
                    )
            # The 'data' filter refuses absolute names, '..', links out of dest and device files.
            tar.extractall(dest, filter="data")
    except tarfile.FilterError as exc:
        raise InvalidModelArchive(f"unsafe member in {archive.name}: {exc}") from exc
    except KeyError as exc:  # a hard link (or a link tarfile falls back to copying) to a member not held
        raise InvalidModelArchive(f"cannot extract {archive.name}: {exc.args[0] if exc.args else exc}") from exc
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise InvalidModelArchive(f"cannot read {archive.name}: {exc}") from exc
