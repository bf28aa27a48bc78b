"""Model data for the local backend: local paths, file:// and s3:// (a moto server in a subprocess)."""

from __future__ import annotations

import hashlib
import io
import os
import sys
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import joblib
import pytest
from sklearn.linear_model import LinearRegression

from mainsail.backends import model_fetch as md
from mainsail.backends import model_sources as sources
from mainsail.backends.base import ModelSourceError
from mainsail.settings import ControlSettings
from tests.conftest import free_port
from tests.control.helpers import Plane

REGION = "us-east-1"
BUCKET = "models"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/mainsail:latest"
ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"
WAIT = {"Delay": 1, "MaxAttempts": 60}

INFERENCE_OK = """
import os
import joblib

def model_fn(model_dir):
    return joblib.load(os.path.join(model_dir, "model.joblib"))
"""


# -- moto in a subprocess ------------------------------------------------------------------------


@pytest.fixture
def s3(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """An S3 client on a fresh bucket; the environment points mainsail at moto."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    httpx.post(moto_url + "/moto-api/reset")
    client = boto3.client("s3", endpoint_url=moto_url, region_name=REGION, aws_access_key_id="testing",
                          aws_secret_access_key="testing")
    client.create_bucket(Bucket=BUCKET)
    return client


# -- model files ---------------------------------------------------------------------------------


def _model_dir(root: Path, with_code: bool = True) -> Path:
    root.mkdir(parents=True)
    if with_code:
        (root / "code").mkdir()
        (root / "code" / "inference.py").write_text(INFERENCE_OK)
    model = LinearRegression().fit([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], [0.0, 2.0, 3.0])
    joblib.dump(model, root / "model.joblib")
    return root


def _tar(src: Path, archive: Path) -> Path:
    """``src``'s contents at the top level of a gzip tarball, as SageMaker expects."""
    with tarfile.open(archive, "w:gz") as tar:
        for child in sorted(src.iterdir()):
            tar.add(child, arcname=child.name)
    return archive


def _evil_tar(archive: Path, kind: str) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        ok = tarfile.TarInfo("model.joblib")
        ok.size = 2
        tar.addfile(ok, io.BytesIO(b"ok"))
        if kind == "symlink":
            link = tarfile.TarInfo("escape")
            link.type = tarfile.SYMTYPE
            link.linkname = "../../../etc/passwd"
            tar.addfile(link)
        else:
            info = tarfile.TarInfo({"dotdot": "../evil.txt", "absolute": "/tmp/evil.txt"}[kind])
            info.size = 4
            tar.addfile(info, io.BytesIO(b"evil"))
    return archive


def _key(archive: Path) -> str:
    return hashlib.sha256(archive.read_bytes()).hexdigest()[:24]


def _finished(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if (p / ".mainsail-complete").exists()) if cache.exists() else []


def _leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if p.name.startswith(".")) if cache.exists() else []


# -- local ---------------------------------------------------------------------------------------


def test_local_directory_is_used_as_is(tmp_path: Path) -> None:
    model = _model_dir(tmp_path / "model")
    assert md.resolve_model_data(str(model), tmp_path / "home") == model.resolve()
    assert md.resolve_model_data(f"file://{model}", tmp_path / "home") == model.resolve()
    assert not (tmp_path / "home" / "models").exists()


def test_local_archive_extracted_once_by_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = _tar(_model_dir(tmp_path / "src"), tmp_path / "model.tar.gz")
    home = tmp_path / "home"
    calls: list[Path] = []
    from mainsail.backends import model_cache  # extracts with mainsail.archives.safe_extract

    real = model_cache.safe_extract

    def counting(path: Path, dest: Path, **kw: Any) -> None:
        calls.append(path)
        real(path, dest, **kw)

    monkeypatch.setattr(model_cache, "safe_extract", counting)
    first = md.resolve_model_data(str(archive), home)
    assert first == home / "models" / _key(archive)
    assert (first / "code" / "inference.py").read_text() == INFERENCE_OK
    assert (first / "model.joblib").is_file()
    # file:// and a copy elsewhere: the same content, the same directory, no second extraction
    copy = tmp_path / "elsewhere" / "other-name.tgz"
    copy.parent.mkdir()
    copy.write_bytes(archive.read_bytes())
    assert md.resolve_model_data(f"file://{archive}", home) == first
    assert md.resolve_model_data(str(copy), home) == first
    assert len(calls) == 1
    assert _leftovers(home / "models") == []


def test_concurrent_callers_share_one_directory(tmp_path: Path) -> None:
    archive = _tar(_model_dir(tmp_path / "src"), tmp_path / "model.tar.gz")
    home = tmp_path / "home"
    results: list[Path] = []
    errors: list[BaseException] = []

    def resolve() -> None:
        try:
            results.append(md.resolve_model_data(str(archive), home))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=resolve) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert set(results) == {home / "models" / _key(archive)}
    assert _finished(home / "models") == [_key(archive)]
    assert _leftovers(home / "models") == []


def test_half_extracted_directory_is_never_used(tmp_path: Path) -> None:
    archive = _tar(_model_dir(tmp_path / "src"), tmp_path / "model.tar.gz")
    home = tmp_path / "home"
    stale = home / "models" / _key(archive)
    stale.mkdir(parents=True)
    (stale / "partial").write_text("crashed mid-way")
    target = md.resolve_model_data(str(archive), home)
    assert target == stale
    assert not (target / "partial").exists() and (target / "model.joblib").is_file()


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_unsafe_archive_refused(tmp_path: Path, kind: str) -> None:
    archive = _evil_tar(tmp_path / f"{kind}.tar.gz", kind)
    home = tmp_path / "home"
    with pytest.raises(ModelSourceError) as exc:
        md.resolve_model_data(f"file://{archive}", home)
    assert f"file://{archive}" in str(exc.value) and "\n" not in str(exc.value)
    assert _finished(home / "models") == [] and _leftovers(home / "models") == []
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/evil.txt").exists()


def test_corrupt_and_missing_local_data(tmp_path: Path) -> None:
    bad = tmp_path / "model.tar.gz"
    bad.write_bytes(b"this is not gzip")
    with pytest.raises(ModelSourceError, match="model.tar.gz"):
        md.resolve_model_data(str(bad), tmp_path / "home")
    for url in (f"file://{tmp_path}/missing", str(tmp_path / "missing.tar.gz")):
        with pytest.raises(ModelSourceError) as exc:
            md.resolve_model_data(url, tmp_path / "home")
        assert url in str(exc.value)
    with pytest.raises(ModelSourceError, match="https://example.com/m.tar.gz"):
        md.resolve_model_data("https://example.com/m.tar.gz", tmp_path / "home")


def test_extracted_size_is_bounded(tmp_path: Path) -> None:
    archive = _tar(_model_dir(tmp_path / "src"), tmp_path / "model.tar.gz")
    with pytest.raises(ModelSourceError, match="more than 100 bytes"):
        md.resolve_model_data(str(archive), tmp_path / "home", max_bytes=100)


# -- container fields ----------------------------------------------------------------------------


def test_container_model_source() -> None:
    assert sources.container_model_source({"ModelDataUrl": "s3://b/m.tar.gz"}) == "s3://b/m.tar.gz"
    assert sources.container_model_source({"Image": "x"}) is None
    prefix = {"ModelDataSource": {"S3DataSource": {"S3Uri": "s3://b/p", "S3DataType": "S3Prefix",
                                                   "CompressionType": "None"}}}
    assert sources.container_model_source(prefix) == "s3://b/p/"
    gz = {"ModelDataSource": {"S3DataSource": {"S3Uri": "s3://b/m.tar.gz", "S3DataType": "S3Object",
                                               "CompressionType": "Gzip"}}}
    assert sources.container_model_source(gz) == "s3://b/m.tar.gz"
    raw = {"ModelDataSource": {"S3DataSource": {"S3Uri": "s3://b/m.bin", "S3DataType": "S3Object",
                                                "CompressionType": "None"}}}
    assert sources.parse_source(sources.container_model_source(raw) or "") == sources.ModelSource("s3://b/m.bin", "S3Object", "None")
    bad = {"ModelDataSource": {"S3DataSource": {"S3Uri": "s3://b/p/", "S3DataType": "S3Prefix",
                                                "CompressionType": "Gzip"}}}
    with pytest.raises(ModelSourceError, match="s3://b/p/"):
        sources.container_model_source(bad)


# -- S3 ------------------------------------------------------------------------------------------


def test_s3_archive_downloaded_once(s3: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = _tar(_model_dir(tmp_path / "src"), tmp_path / "model.tar.gz")
    s3.upload_file(str(archive), BUCKET, "jobs/1/output/model.tar.gz")
    url = f"s3://{BUCKET}/jobs/1/output/model.tar.gz"
    downloads: list[str] = []
    real = md._download

    def counting(client: Any, url: str, *args: Any) -> None:
        downloads.append(url)
        real(client, url, *args)

    monkeypatch.setattr(md, "_download", counting)
    home = tmp_path / "home"
    target = md.resolve_model_data(url, home)
    assert target == home / "models" / _key(archive)
    assert (target / "code" / "inference.py").read_text() == INFERENCE_OK
    assert md.resolve_model_data(url, home) == target
    assert downloads == [url]  # ETag + size seen before: no second download
    assert (home / "s3-index.json").is_file()
    assert not any((home / "downloads").iterdir())
    # new content under the same key: downloaded again, a new directory
    other = _model_dir(tmp_path / "src2", with_code=False)
    (other / "extra.txt").write_text("v2")
    archive2 = _tar(other, tmp_path / "model2.tar.gz")
    s3.upload_file(str(archive2), BUCKET, "jobs/1/output/model.tar.gz")
    target2 = md.resolve_model_data(url, home)
    assert target2 == home / "models" / _key(archive2) != target
    assert (target2 / "extra.txt").read_text() == "v2" and len(downloads) == 2
    # a local file with the same content reuses the S3 download's directory
    assert md.resolve_model_data(str(archive2), home) == target2


def test_s3_prefix_uncompressed(s3: Any, tmp_path: Path) -> None:
    src = _model_dir(tmp_path / "src")
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        s3.upload_file(str(path), BUCKET, f"uncompressed/v1/{path.relative_to(src).as_posix()}")
    s3.put_object(Bucket=BUCKET, Key="uncompressed/v1/empty-folder/", Body=b"")
    s3.put_object(Bucket=BUCKET, Key="uncompressed/v10/other.txt", Body=b"not mine")
    home = tmp_path / "home"
    source = {"S3DataSource": {"S3Uri": f"s3://{BUCKET}/uncompressed/v1", "S3DataType": "S3Prefix",
                               "CompressionType": "None"}}
    target = md.resolve_model_data(source, home)
    files = sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file())
    assert files == [".mainsail-complete", "code/inference.py", "model.joblib"]
    assert (target / "model.joblib").read_bytes() == (src / "model.joblib").read_bytes()
    assert md.resolve_model_data(f"s3://{BUCKET}/uncompressed/v1/", home) == target
    assert _leftovers(home / "models") == []
    with pytest.raises(ModelSourceError, match=f"s3://{BUCKET}/nothing/here/"):
        md.resolve_model_data(f"s3://{BUCKET}/nothing/here/", home)


def test_model_data_source_dicts(s3: Any, tmp_path: Path) -> None:
    archive = _tar(_model_dir(tmp_path / "src"), tmp_path / "model.tar.gz")
    s3.upload_file(str(archive), BUCKET, "m/model.tar.gz")
    s3.put_object(Bucket=BUCKET, Key="raw/weights.bin", Body=b"\x00\x01weights")
    home = tmp_path / "home"
    container = {"Image": IMAGE, "ModelDataSource": {"S3DataSource": {
        "S3Uri": f"s3://{BUCKET}/m/model.tar.gz", "S3DataType": "S3Object", "CompressionType": "Gzip"}}}
    target = md.resolve_model_data(container, home)
    assert (target / "model.joblib").is_file()
    raw = {"S3DataSource": {"S3Uri": f"s3://{BUCKET}/raw/weights.bin", "S3DataType": "S3Object",
                            "CompressionType": "None"}}
    single = md.resolve_model_data(raw, home)
    assert (single / "weights.bin").read_bytes() == b"\x00\x01weights"
    assert md.resolve_model_data(f"s3://{BUCKET}/raw/weights.bin#uncompressed", home) == single


def test_submit_directory_sourcedir(s3: Any, tmp_path: Path) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "inference.py").write_text(INFERENCE_OK)
    (code / "helper.py").write_text("X = 1\n")
    sourcedir = _tar(code, tmp_path / "sourcedir.tar.gz")
    s3.upload_file(str(sourcedir), BUCKET, "sagemaker-scikit-learn-2026/source/sourcedir.tar.gz")
    home = tmp_path / "home"
    env = {"SAGEMAKER_PROGRAM": "inference.py", "SAGEMAKER_REGION": REGION,
           "SAGEMAKER_SUBMIT_DIRECTORY": f"s3://{BUCKET}/sagemaker-scikit-learn-2026/source/sourcedir.tar.gz"}
    out = md.resolve_environment(env, home)
    local = Path(out["SAGEMAKER_SUBMIT_DIRECTORY"])
    assert local == home / "sources" / _key(sourcedir)
    assert (local / "inference.py").read_text() == INFERENCE_OK and (local / "helper.py").is_file()
    assert {k: v for k, v in out.items() if k != "SAGEMAKER_SUBMIT_DIRECTORY"} == {
        "SAGEMAKER_PROGRAM": "inference.py", "SAGEMAKER_REGION": REGION}
    assert env["SAGEMAKER_SUBMIT_DIRECTORY"].startswith("s3://")  # the input is not changed
    # file:// and local tarballs land in the same place; directories and absent paths stay
    assert md.resolve_environment({"SAGEMAKER_SUBMIT_DIRECTORY": f"file://{sourcedir}"}, home) == {
        "SAGEMAKER_SUBMIT_DIRECTORY": str(local)}
    assert md.resolve_environment({"SAGEMAKER_SUBMIT_DIRECTORY": str(sourcedir)}, home) == {
        "SAGEMAKER_SUBMIT_DIRECTORY": str(local)}
    assert md.resolve_environment({"SAGEMAKER_SUBMIT_DIRECTORY": f"file://{code}"}, home) == {
        "SAGEMAKER_SUBMIT_DIRECTORY": str(code.resolve())}
    for untouched in ({"SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/model/code"}, {"OTHER": "s3://x/y"}, {}):
        assert md.resolve_environment(untouched, home) == untouched
    missing = f"s3://{BUCKET}/nope/sourcedir.tar.gz"
    with pytest.raises(ModelSourceError, match=missing):
        md.resolve_environment({"SAGEMAKER_SUBMIT_DIRECTORY": missing}, home)


def test_s3_failures_name_the_url(s3: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    missing_key = f"s3://{BUCKET}/no/such/model.tar.gz"
    with pytest.raises(ModelSourceError) as exc:
        md.resolve_model_data(missing_key, home)
    assert missing_key in str(exc.value) and "no such object" in str(exc.value)
    missing_bucket = "s3://no-such-bucket/model.tar.gz"
    with pytest.raises(ModelSourceError) as exc:
        md.resolve_model_data(missing_bucket, home)
    assert missing_bucket in str(exc.value) and "no-such-bucket does not exist" in str(exc.value)
    with pytest.raises(ModelSourceError) as exc:
        md.resolve_model_data("s3://no-such-bucket/prefix/", home)
    assert "s3://no-such-bucket/prefix/" in str(exc.value) and "does not exist" in str(exc.value)
    s3.put_object(Bucket=BUCKET, Key="corrupt/model.tar.gz", Body=b"not a tarball")
    with pytest.raises(ModelSourceError, match=f"s3://{BUCKET}/corrupt/model.tar.gz"):
        md.resolve_model_data(f"s3://{BUCKET}/corrupt/model.tar.gz", home)
    s3.put_object(Bucket=BUCKET, Key="big/model.tar.gz", Body=b"x" * 1000)
    with pytest.raises(ModelSourceError, match="more than the limit"):
        md.resolve_model_data(f"s3://{BUCKET}/big/model.tar.gz", home, max_bytes=999)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ModelSourceError) as exc:
        md.resolve_model_data(f"s3://{BUCKET}/m/model.tar.gz", home)
    assert f"s3://{BUCKET}/m/model.tar.gz" in str(exc.value) and "cannot reach" in str(exc.value)
    assert "\n" not in str(exc.value)


def test_s3_endpoint_from_environment_and_dummy_credentials(s3: Any, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    s3.put_object(Bucket=BUCKET, Key="raw/w.bin", Body=b"w")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    access = ControlSettings().s3  # as mainsail up reads the environment at its start
    client = md.s3_client(s3=access)
    assert client.meta.endpoint_url == os.environ["AWS_ENDPOINT_URL_S3"]
    assert client.meta.region_name == "eu-west-1"
    target = md.resolve_model_data(f"s3://{BUCKET}/raw/w.bin#uncompressed", tmp_path / "home", s3=access)
    assert (target / "w.bin").read_bytes() == b"w"
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.meta.endpoint_url)
    assert md.s3_client(s3=ControlSettings().s3).meta.endpoint_url == s3.meta.endpoint_url


def test_missing_boto3_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)
    with pytest.raises(ModelSourceError, match=r"pip install 'mainsail\[s3\]'") as exc:
        md.resolve_model_data("s3://b/model.tar.gz", tmp_path)
    assert "s3://b/model.tar.gz" in str(exc.value)


# -- end to end (the control plane of tests/control/helpers.py, model data from moto) ---------------


@pytest.fixture
def plane(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, s3: Any) -> Iterator[Plane]:
    monkeypatch.setenv("MAINSAIL_HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    with Plane(tmp_path / "home") as p:
        yield p


def _endpoint(sm: Any, name: str, container: dict[str, Any]) -> None:
    sm.create_model(ModelName=name, ExecutionRoleArn=ROLE, PrimaryContainer={"Image": IMAGE, **container})
    sm.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[
        {"VariantName": "AllTraffic", "ModelName": name, "InitialInstanceCount": 1,
         "InstanceType": "ml.m5.large"}])
    sm.create_endpoint(EndpointName=name, EndpointConfigName=name)


def _predict(rt: Any, name: str) -> list[float]:
    out = rt.invoke_endpoint(EndpointName=name, ContentType="text/csv", Accept="text/csv", Body=b"1,1\n2,0\n")
    return [float(x) for x in out["Body"].read().decode().split()]


@pytest.mark.slow
def test_endpoint_from_s3_model_data(plane: Plane, s3: Any, tmp_path: Path) -> None:
    sm, rt = plane.client("sagemaker"), plane.client("sagemaker-runtime")
    archive = _tar(_model_dir(tmp_path / "src"), tmp_path / "model.tar.gz")
    s3.upload_file(str(archive), BUCKET, "sklearn/output/model.tar.gz")
    _endpoint(sm, "from-s3", {"ModelDataUrl": f"s3://{BUCKET}/sklearn/output/model.tar.gz"})
    # as SDK v2 SKLearnModel deploys: weights only in the model, the script in sourcedir.tar.gz;
    # here the weights come uncompressed from a prefix (ModelDataSource)
    weights = _model_dir(tmp_path / "weights", with_code=False)
    s3.upload_file(str(weights / "model.joblib"), BUCKET, "uncompressed/model.joblib")
    code = tmp_path / "code"
    code.mkdir()
    (code / "inference.py").write_text(INFERENCE_OK)
    s3.upload_file(str(_tar(code, tmp_path / "sourcedir.tar.gz")), BUCKET, "src/sourcedir.tar.gz")
    _endpoint(sm, "from-prefix", {
        "ModelDataSource": {"S3DataSource": {"S3Uri": f"s3://{BUCKET}/uncompressed/",
                                             "S3DataType": "S3Prefix", "CompressionType": "None"}},
        "Environment": {"SAGEMAKER_PROGRAM": "inference.py",
                        "SAGEMAKER_SUBMIT_DIRECTORY": f"s3://{BUCKET}/src/sourcedir.tar.gz"}})
    for name in ("from-s3", "from-prefix"):
        sm.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig=WAIT)
        assert _predict(rt, name) == pytest.approx([5.0, 4.0])
        sm.delete_endpoint(EndpointName=name)
    for name in ("from-s3", "from-prefix"):
        sm.get_waiter("endpoint_deleted").wait(EndpointName=name, WaiterConfig=WAIT)


@pytest.mark.slow
def test_endpoint_with_missing_s3_key_fails(plane: Plane) -> None:
    sm = plane.client("sagemaker")
    url = f"s3://{BUCKET}/no/such/model.tar.gz"
    _endpoint(sm, "missing", {"ModelDataUrl": url})
    with pytest.raises(Exception, match="Failed"):
        sm.get_waiter("endpoint_in_service").wait(EndpointName="missing", WaiterConfig=WAIT)
    desc = sm.describe_endpoint(EndpointName="missing")
    assert desc["EndpointStatus"] == "Failed"
    assert url in desc["FailureReason"] and "no such object" in desc["FailureReason"]
