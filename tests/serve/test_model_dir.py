from __future__ import annotations

import io
import tarfile
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fuzz.archives import extract_and_check
from mainsail.archives import safe_extract
from mainsail.errors import InvalidModelArchive, ModelLoadError
from mainsail.serve.model_dir import extract_cached, prepare_model
from mainsail.settings import ServeSettings


def tar_with(path: Path, *members: tarfile.TarInfo, data: bytes = b"x") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info in members:
            if info.isreg():
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return path


def link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


@pytest.mark.parametrize("member", [
    tarfile.TarInfo("../escape.txt"),
    link("code/link", "/etc/passwd"),
    link("code/up", "../../outside"),
    link("hard", "/etc/passwd", tarfile.LNKTYPE),
])
def test_unsafe_members_are_refused(tmp_path: Path, member: tarfile.TarInfo) -> None:
    archive = tar_with(tmp_path / "bad.tar.gz", member)
    with pytest.raises(InvalidModelArchive):
        safe_extract(archive, tmp_path / "out")


def test_absolute_names_land_inside_the_target(tmp_path: Path) -> None:
    archive = tar_with(tmp_path / "abs.tar.gz", tarfile.TarInfo("/etc/evil.txt"))
    safe_extract(archive, tmp_path / "out")
    assert (tmp_path / "out" / "etc" / "evil.txt").read_bytes() == b"x"


def test_size_and_member_bounds(tmp_path: Path) -> None:
    archive = tar_with(tmp_path / "big.tar.gz", tarfile.TarInfo("a"), tarfile.TarInfo("b"), data=b"0" * 100)
    with pytest.raises(InvalidModelArchive, match="more than 150 bytes"):
        safe_extract(archive, tmp_path / "o1", max_bytes=150)
    with pytest.raises(InvalidModelArchive, match="more than 1 members"):
        safe_extract(archive, tmp_path / "o2", max_members=1)


def test_not_an_archive(tmp_path: Path) -> None:
    bogus = tmp_path / "model.tar.gz"
    bogus.write_bytes(b"not a tarball")
    with pytest.raises(InvalidModelArchive, match="cannot read"):
        safe_extract(bogus, tmp_path / "out")


def test_extraction_is_cached_by_content(tmp_path: Path) -> None:
    archive = tar_with(tmp_path / "m.tar.gz", tarfile.TarInfo("model.bin"))
    first = extract_cached(archive, tmp_path / "cache")
    (first / "model.bin").write_text("touched")
    assert extract_cached(archive, tmp_path / "cache") == first
    assert (first / "model.bin").read_text() == "touched"


def test_script_lookup_order(tmp_path: Path) -> None:
    model = tmp_path / "model"
    (model / "code").mkdir(parents=True)
    (model / "code" / "inference.py").write_text("")
    src = tmp_path / "src"
    src.mkdir()
    (src / "inference.py").write_text("")
    home = tmp_path / "home"
    assert prepare_model(ServeSettings(model_path=str(model), home=home)).script == model / "code" / "inference.py"
    assert prepare_model(ServeSettings(model_path=str(model), source_dir=str(src), home=home)).script == \
        src / "inference.py"
    with pytest.raises(ModelLoadError, match="other.py not found"):
        prepare_model(ServeSettings(model_path=str(model), entry_point="other", home=home))
    with pytest.raises(ModelLoadError, match="does not exist"):
        prepare_model(ServeSettings(model_path=str(tmp_path / "nope"), home=home))
    bare = tmp_path / "bare"
    bare.mkdir()
    assert prepare_model(ServeSettings(model_path=str(bare), home=home)).script is None


SEGMENTS = st.sampled_from(["a", "b", "..", ".", "", "code", "ü", "x" * 120])
PATHS = st.lists(SEGMENTS, min_size=1, max_size=4).map("/".join) | st.just("/etc/passwd")
KINDS = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE,
         "chr": tarfile.CHRTYPE, "fifo": tarfile.FIFOTYPE}
MEMBERS = st.tuples(st.sampled_from(sorted(KINDS)), PATHS, PATHS, st.integers(0, 0o7777), st.binary(max_size=64))


@settings(max_examples=150, deadline=None, derandomize=True)
@given(st.lists(MEMBERS, max_size=8), st.sampled_from(["w", "w:gz", "w:bz2"]), st.sampled_from(
    [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT]))
def test_any_archive_extracts_inside_its_target_or_is_refused(
        members: list[tuple[str, str, str, int, bytes]], mode: str, fmt: int) -> None:
    """Archives of any members (names with ``..`` or ``/``, links anywhere, devices, any mode bits): what
    ``safe_extract`` leaves is the fuzz target's invariant (fuzz/archives.py): nothing outside the target,
    no device or FIFO, no link leading out, no setuid or group/other-writable file."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode=mode, format=fmt) as tar:  # type: ignore[call-overload]
        for kind, name, target, perms, data in members:
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.mode = KINDS[kind], target, perms
            info.size = len(data) if kind == "file" else 0
            tar.addfile(info, io.BytesIO(data) if kind == "file" else None)
    with tempfile.TemporaryDirectory() as root:
        extract_and_check(out.getvalue(), Path(root))
