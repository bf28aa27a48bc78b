"""What the CloudWatch tests share: a control plane (``create_control_app``, as ``mainsail up`` builds it)
in a thread with CloudWatch's clock 60 times faster than real time, and CloudWatch clients made by real
botocore for each of the service's three protocols: smithy-rpc-v2-cbor (boto3's own model), AWS JSON 1.0
and query (copies of the model whose ``protocol`` says so, loaded from a data path of their own)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import boto3
import botocore
import botocore.session
from botocore.config import Config

from mainsail.aws.cloudwatch.actions import AlarmActions
from mainsail.gateway.app import create_control_app
from mainsail.hosting.store import SQLiteStore
from mainsail.settings import ControlSettings
from tests.conftest import ThreadedServer

REGION = "us-east-1"
PROTOCOLS = ("smithy-rpc-v2-cbor", "json", "query")
TIME_SCALE = 60.0
_MODEL = Path(botocore.__file__).parent / "data" / "cloudwatch" / "2010-08-01" / "service-2.json.gz"


class CloudWatchPlane(ThreadedServer):
    """The control app over ``home`` in a thread, CloudWatch's alarm actions reaching ``actions``."""

    def __init__(self, home: Path, actions: AlarmActions | None = None, time_scale: float = TIME_SCALE) -> None:
        self.home = home
        self.actions = actions or AlarmActions()
        self.store = SQLiteStore(home / "state.db")
        settings = ControlSettings(home=home, metrics_time_scale=time_scale)
        super().__init__(create_control_app(self.store, settings=settings, alarm_actions=self.actions))

    def __enter__(self) -> CloudWatchPlane:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.store.close()


def model_dir(root: Path, protocol: str) -> Path:
    """A botocore data directory whose CloudWatch model speaks ``protocol``."""
    model = json.loads(gzip.decompress(_MODEL.read_bytes()))
    model["metadata"]["protocol"] = protocol
    model["metadata"]["protocols"] = [protocol]
    target = root / protocol / "cloudwatch" / "2010-08-01"
    target.mkdir(parents=True, exist_ok=True)
    (target / "service-2.json").write_text(json.dumps(model))
    return root / protocol


def cloudwatch_client(url: str, protocol: str, data_root: Path) -> Any:
    """A real botocore CloudWatch client speaking ``protocol`` to ``url``."""
    session = botocore.session.get_session()
    if protocol != "smithy-rpc-v2-cbor":
        session.get_component("data_loader").search_paths.insert(0, str(model_dir(data_root, protocol)))
    client = boto3.Session(botocore_session=session).client(
        "cloudwatch", endpoint_url=url, region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x",
        config=Config(retries={"max_attempts": 1, "mode": "standard"}))
    assert client.meta.service_model.protocol == protocol
    return client
