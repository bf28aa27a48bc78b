"""The target for model archive extraction (``mainsail.archives.safe_extract``: ``model.tar.gz``,
``sourcedir.tar.gz``)."""

from __future__ import annotations

import functools
import gzip
import io
import os
import shutil
import stat
import tarfile
from pathlib import Path

from fuzz import Target, check, scratch
from fuzz.inputs import Reader
from mainsail.archives import safe_extract
from mainsail.errors import InvalidModelArchive

MAX_BYTES = 64 * 1024
MAX_MEMBERS = 32


@functools.cache
def _root() -> Path:
    return scratch("tar")


def tar_extract(data: bytes) -> None:
    reader = Reader(data)
    wrap = reader.u8() % 3
    raw = reader.rest()
    extract_and_check(gzip.compress(raw, mtime=0) if wrap == 1 else raw, _root())


def extract_and_check(archive_bytes: bytes, root: Path) -> bool:
    """Extract ``archive_bytes`` with ``safe_extract`` into ``root/case/a/b/out`` (``root/case`` made anew)
    and check what it left; whether it extracted (False: ``InvalidModelArchive``)."""
    case = root / "case"
    if case.exists():
        shutil.rmtree(case)
    dest = case / "a" / "b" / "out"
    dest.mkdir(parents=True)
    archive = case / "model.tar.gz"
    archive.write_bytes(archive_bytes)
    try:
        safe_extract(archive, dest, max_bytes=MAX_BYTES, max_members=MAX_MEMBERS)
    except InvalidModelArchive:
        extracted = False
    else:
        extracted = True
    _check_tree(case, dest)
    return extracted


def _check_tree(case: Path, dest: Path) -> None:
    """Nothing beside the archive and the destination; inside it, no device or FIFO, no link leading out,
    no setuid or group/other-writable file, at most ``MAX_BYTES`` of data."""
    for above, expected in ((case, {"model.tar.gz", "a"}), (case / "a", {"b"}), (case / "a" / "b", {"out"})):
        found = set(os.listdir(above))
        check(found <= expected, f"extraction wrote outside its target: {sorted(found - expected)} in {above.name}")
    real_dest = os.path.realpath(dest)
    total = 0
    inodes: dict[int, int] = {}
    for directory, dirs, files in os.walk(dest):
        for name in dirs + files:
            path = os.path.join(directory, name)
            info = os.lstat(path)
            mode = info.st_mode
            check(stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode),
                  f"extraction made a {stat.filemode(mode)} at {os.path.relpath(path, dest)!r}")
            check(not mode & (stat.S_ISUID | stat.S_ISGID | stat.S_IWGRP | stat.S_IWOTH) or stat.S_ISLNK(mode),
                  f"extraction left mode {stat.filemode(mode)} on {os.path.relpath(path, dest)!r}")
            if stat.S_ISLNK(mode):
                target = os.path.realpath(path)
                check(os.path.commonpath([target, real_dest]) == real_dest,
                      f"a link leads out of the target: {os.path.relpath(path, dest)!r} -> {os.readlink(path)!r}")
            elif stat.S_ISREG(mode):
                total += info.st_size
                inodes[info.st_ino] = inodes.get(info.st_ino, 0) + 1
                check(info.st_nlink <= inodes[info.st_ino] or _more_names_inside(info.st_ino, dest, info.st_nlink),
                      f"{os.path.relpath(path, dest)!r} is a hard link to a file outside the target")
    check(total <= MAX_BYTES, f"extracted {total} bytes; the limit is {MAX_BYTES}")


def _more_names_inside(inode: int, dest: Path, links: int) -> bool:
    names = sum(1 for directory, _, files in os.walk(dest) for name in files
                if os.lstat(os.path.join(directory, name)).st_ino == inode)
    return names == links


def _tar(members: list[tuple[tarfile.TarInfo, bytes]], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        for info, content in members:
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content) if content else None)
    return out.getvalue().rstrip(b"\0") + b"\0" * 512


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "", mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, mode
    return info


def _tar_seeds() -> list[bytes]:
    model = _tar([(_member("code", tarfile.DIRTYPE, mode=0o755), b""), (_member("code/inference.py"), b"print(1)\n"),
                  (_member("model.bin", mode=0o4777), b"\0" * 100),
                  (_member("alias", tarfile.SYMTYPE, "model.bin"), b""),
                  (_member("hard", tarfile.LNKTYPE, "model.bin"), b"")])
    unsafe = _tar([(_member("../evil"), b"x"), (_member("/abs"), b"y"),
                   (_member("up", tarfile.SYMTYPE, "../../.."), b""), (_member("dev", tarfile.CHRTYPE), b""),
                   (_member("fifo", tarfile.FIFOTYPE), b""), (_member("up/escape"), b"z")])
    long_names = _tar([(_member("d/" + "n" * 150), b"long"), (_member("big"), b"b" * 600),
                       (_member("dangling", tarfile.LNKTYPE, "missing"), b"")], tarfile.GNU_FORMAT)
    return [b"\0" + model, b"\1" + model, b"\2" + gzip.compress(unsafe, mtime=0), b"\0" + unsafe, b"\1" + long_names]


TARGETS = [
    Target("tar", tar_extract, "safe_extract extracts or raises InvalidModelArchive; it writes nothing outside its "
           "target, makes no device or FIFO, no link leading out, no setuid or group/other-writable file, and "
           f"at most max_bytes ({MAX_BYTES}) of data", _tar_seeds, max_len=16384),
]
