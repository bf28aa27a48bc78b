"""The single-sequence reference networks: the text-only ``bert`` (TextBertClassification) and
``bimodal_cnn`` (BimodalCNN + TextCNN).

Model directories are built here in the reference layout (a tiny random-init BERT config and a tokenizer
made from a vocabulary in this file, never a hub download): the exact ``state_dict`` keys read from the
reference code, strict loading, the first-chunk semantics, equality with a direct forward pass, the
ONNX export, and ``mainsail serve`` end to end.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from torch import nn
from torch.torch_version import TorchVersion
from transformers import BertConfig, BertModel

from mainsail.errors import ModelLoadError
from mainsail.handlers.base import Invocation
from mainsail.handlers.pytorch import default_model_registry, load_pytorch_model
from mainsail.handlers.pytorch.cnn import BimodalCNN
from mainsail.handlers.pytorch.export import export_onnx
from mainsail.handlers.pytorch.handler import PyTorchHandler
from mainsail.handlers.pytorch.models import TextBertClassification
from tests.conftest import ServerProcess

TEXT = "dialogue"
TAB = ["amount", "count"]
TOKENS = 16
WORDS = ["hello", "my", "order", "is", "late", "refund", "please", "the", "lamp", "arrived", "broken", "thanks",
         "where", "package", "account", "locked", "password", "reset", "ok", "bye", ".", ",", "?", "!"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
ENCODER = {"vocab_size": len(VOCAB), "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
           "intermediate_size": 64, "max_position_embeddings": 32}
CNN = {"kernel_size": [2, 3], "num_layers": 2, "num_channels": [6, 5]}
STEPS = ["dialogue_splitter", "text_normalizer", "dialogue_chunker", "tokenizer"]
JSON = "application/json"
SHORT = {TEXT: "[bom] hello my order is late [eom]", "amount": 12.5, "count": 2}
LONG = {  # three chunks of at most 16 tokens: the first is "where is my package ? my order is late ."
    TEXT: "[bom] where is my package? my order is late. [eom][bom] the lamp arrived broken, refund please! [eom]"
          "[bom] my account is locked, reset the password please [eom]",
    "amount": 80.0, "count": 1,
}


def model_config(model_class: str, *, num_classes: int = 2, tab: bool = True) -> dict[str, Any]:
    """A reference ``Config`` dump (the keys these classes and the handler read)."""
    return {
        "model_class": model_class, "text_name": TEXT, "label_name": "label", "id_name": "order_id",
        "tab_field_list": TAB if tab else [], "cat_field_list": [TEXT], "full_field_list": [*TAB, TEXT, "label"],
        "is_binary": num_classes == 2, "num_classes": num_classes,
        "multiclass_categories": list(range(num_classes)), "class_weights": [1.0] + [3.0] * (num_classes - 1),
        "hidden_common_dim": 8, "max_sen_len": TOKENS, "chunk_trancate": True, "max_total_chunks": 3,
        "dropout_keep": 0.5, "tokenizer": "tokenizer", "text_input_ids_key": "input_ids",
        "text_attention_mask_key": "attention_mask", "text_processing_steps": STEPS, "embed_size": 32,
        "model_path": "/opt/ml/model", **CNN,
    }


def write_tokenizer(folder: Path) -> None:
    from transformers import BertTokenizer

    BertTokenizer(vocab={t: i for i, t in enumerate(VOCAB)}, do_lower_case=True,
                  model_max_length=32).save_pretrained(str(folder))
    BertConfig(**ENCODER).save_pretrained(str(folder))


def build_model_dir(path: Path, model_class: str, *, seed: int = 0, **config_overrides: Any) -> Path:
    """A reference model directory for ``model_class`` with random weights large enough to separate texts."""
    path.mkdir(parents=True)
    write_tokenizer(path / "tokenizer")
    config = {**model_config(model_class), **config_overrides}
    torch.manual_seed(seed)
    embedding_mat = nn.Parameter(torch.randn(len(VOCAB), ENCODER["hidden_size"]))
    model = default_model_registry().create(
        model_class, {**config, "bert_config": BertConfig(**ENCODER), "embedding_mat": embedding_mat}
    )
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.3)
    torch.save(model.state_dict(), path / "model.pth")
    artifacts = {"config": config, "embedding_mat": embedding_mat, "vocab": {t: i for i, t in enumerate(VOCAB)},
                 "model_class": model_class, "torch_version": TorchVersion(torch.__version__),
                 "transformers_version": "4.37.2", "pytorch_lightning_version": "2.1.3"}
    torch.save(artifacts, path / "model_artifacts.pth")
    (path / "hyperparameters.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    return path


@pytest.fixture(scope="module", params=["bert", "bimodal_cnn"])
def model_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_model_dir(tmp_path_factory.mktemp(request.param) / "model", request.param)


@pytest.fixture(scope="module")
def handler(model_dir: Path) -> PyTorchHandler:
    loaded = PyTorchHandler(model_dir, use_onnx=False, device="cpu")
    loaded.load()
    return loaded


def scores(handler: PyTorchHandler, records: list[Mapping[str, Any]]) -> list[float]:
    body = handler.invoke(Invocation(json.dumps(records).encode(), JSON, JSON)).body
    return [float(r["legacy-score"]) for r in json.loads(body)["predictions"]]


def direct_probabilities(model_dir: Path, records: list[Mapping[str, Any]], handler: PyTorchHandler) -> np.ndarray:
    """The network built here from the directory's files (not through the loader), run one record at a time
    on the handler's inputs with the chunk dimension cut to the first chunk by hand."""
    artifacts = torch.load(model_dir / "model_artifacts.pth", weights_only=False)
    config = {**artifacts["config"], "bert_config": BertConfig.from_pretrained(str(model_dir / "tokenizer")),
              "embedding_mat": artifacts["embedding_mat"]}
    network: nn.Module = (TextBertClassification if config["model_class"] == "bert" else BimodalCNN)(config)
    network.load_state_dict(torch.load(model_dir / "model.pth", weights_only=True), strict=True)
    network.eval()
    out = []
    for record in records:
        inputs = handler.collate([handler.encode_record(record)])
        batch = {k: torch.from_numpy(v[:, 0] if v.ndim == 3 else v) for k, v in inputs.items()}  # (1, T)
        with torch.inference_mode():
            out.append(torch.softmax(network(batch), dim=1).numpy())
    return np.concatenate(out)


# ------------------------------------------------------------------------------------------- registry


def test_registered_by_name_and_alias() -> None:
    registry = default_model_registry()
    assert registry.resolve("bert") == "bert"
    assert registry.resolve("multimodal_cnn") == registry.resolve(" BIMODAL_CNN ") == "bimodal_cnn"
    assert registry.aliases("bimodal_cnn") == ["multimodal_cnn"]
    assert registry.aliases("bert") == []
    with pytest.raises(ModelLoadError, match="does not implement"):
        registry.resolve("lstm")


# --------------------------------------------------------------------------------------- layouts


def test_bert_state_dict_is_the_reference_layout() -> None:
    """AutoModelForSequenceClassification under ``bert``: ``bert.bert.*`` + ``bert.classifier``; the
    reference's loss_op stays None, so no loss buffers."""
    config = {**model_config("bert", num_classes=3), "bert_config": BertConfig(**ENCODER)}
    state = TextBertClassification(config).state_dict()
    encoder = BertModel(BertConfig(**ENCODER), add_pooling_layer=True).state_dict()
    expected = {f"bert.bert.{k}": tuple(v.shape) for k, v in encoder.items()}
    expected |= {"bert.classifier.weight": (3, 32), "bert.classifier.bias": (3,)}
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    assert "bert.bert.pooler.dense.weight" in state and not any("loss" in k or "class_weights" in k for k in state)


def test_bimodal_cnn_state_dict_is_the_reference_layout() -> None:
    config = {**model_config("bimodal_cnn"), "bert_config": BertConfig(**ENCODER)}
    state = BimodalCNN(config).state_dict()
    expected: dict[str, tuple[int, ...]] = {"text_subnetwork.embeddings.weight": (len(VOCAB), 32)}
    for i, k in enumerate(CNN["kernel_size"]):  # Conv, ReLU, MaxPool per layer: convs at .0 and .3
        expected |= {f"text_subnetwork.convs.{i}.0.weight": (6, 32, k), f"text_subnetwork.convs.{i}.0.bias": (6,),
                     f"text_subnetwork.convs.{i}.3.weight": (5, 6, k), f"text_subnetwork.convs.{i}.3.bias": (5,)}
    expected |= {
        "text_subnetwork.network.1.weight": (8, 5 * 2), "text_subnetwork.network.1.bias": (8,),
        "text_subnetwork.class_weights_tensor": (2,), "text_subnetwork.loss_op.weight": (2,),
        "tab_subnetwork.embedding_layer.0.weight": (2,), "tab_subnetwork.embedding_layer.0.bias": (2,),
        "tab_subnetwork.embedding_layer.1.weight": (8, 2), "tab_subnetwork.embedding_layer.1.bias": (8,),
        "final_merge_network.1.weight": (2, 16), "final_merge_network.1.bias": (2,),
        "class_weights_tensor": (2,), "loss_op.weight": (2,),
    }
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    assert state["class_weights_tensor"].tolist() == [1.0, 3.0]


def test_the_cnn_pools_to_one_position_at_max_sen_len() -> None:
    """Layer 1: T - k + 1, pooled by k; the last layer pools over what is left (the reference's arithmetic)."""
    config = {**model_config("bimodal_cnn"), "bert_config": BertConfig(**ENCODER)}
    cnn = BimodalCNN(config).text_subnetwork
    pools = [[m.kernel_size for m in stack if isinstance(m, nn.MaxPool1d)] for stack in cnn.convs]
    # k=2: 16-1=15 -> (15-2)//2+1=7 -> 7-1=6; k=3: 16-2=14 -> (14-3)//3+1=4 -> 4-2=2
    assert pools == [[2, 6], [3, 2]]


def test_the_cnn_embeddings_start_from_the_artifacts_matrix() -> None:
    matrix = torch.randn(len(VOCAB), 12)
    network = BimodalCNN({**model_config("bimodal_cnn", tab=False), "embedding_mat": matrix})
    assert torch.equal(network.text_subnetwork.embeddings.weight, matrix)
    assert network.tab_subnetwork is None and network.final_merge_network[1].in_features == 8


def test_bad_cnn_configs_are_clear_errors() -> None:
    registry = default_model_registry()
    matrix = torch.zeros(len(VOCAB), 4)
    with pytest.raises(ModelLoadError, match="max_sen_len 6 is too short"):
        registry.create("bimodal_cnn", {**model_config("bimodal_cnn"), "max_sen_len": 6, "embedding_mat": matrix})
    with pytest.raises(ModelLoadError, match="embedding_mat"):
        registry.create("bimodal_cnn", model_config("bimodal_cnn"))
    network = registry.create("bimodal_cnn", {**model_config("bimodal_cnn"), "embedding_mat": matrix})
    batch = {f"{TEXT}_input_ids": torch.ones(1, 1, TOKENS + 1, dtype=torch.long), "amount": torch.zeros(1),
             "count": torch.zeros(1)}
    with pytest.raises(ValueError, match="17 tokens a chunk; this CNN was built for max_sen_len 16"):
        network(batch)


# ------------------------------------------------------------------------- loading and the forward pass


def test_loads_strictly_and_a_wrong_layout_is_named(model_dir: Path, tmp_path: Path) -> None:
    network, config = load_pytorch_model(model_dir)
    assert config["model_class"] in ("bert", "bimodal_cnn") and not network.training
    other = build_model_dir(tmp_path / "other", "bimodal_cnn" if config["model_class"] == "bert" else "bert")
    (tmp_path / "other" / "model.pth").write_bytes((model_dir / "model.pth").read_bytes())
    with pytest.raises(ModelLoadError, match="does not fit model_class") as info:
        load_pytorch_model(other)
    hint = "bimodal_cnn" if config["model_class"] == "bimodal_cnn" else "bert (TextBertClassification)"
    assert f"look like a {hint} network" in info.value.message


def test_a_chunked_batch_scores_each_records_first_chunk(model_dir: Path) -> None:
    network, _ = load_pytorch_model(model_dir)
    rng = np.random.default_rng(0)
    ids = torch.from_numpy(rng.integers(5, len(VOCAB), size=(3, 3, TOKENS)))
    mask = torch.ones_like(ids)
    mask[1, 0, 9:] = 0
    mask[2, 1:] = 0  # trailing padding chunks, as the reference collate adds them
    ids = ids * mask
    tab = {"amount": torch.tensor([1.0, -2.0, 3.0]), "count": torch.tensor([[0.0], [1.0], [2.0]])}
    keys = (f"{TEXT}_input_ids", f"{TEXT}_attention_mask")
    with torch.inference_mode():
        chunked = network({keys[0]: ids, keys[1]: mask, **tab})
        first = network({keys[0]: ids[:, 0], keys[1]: mask[:, 0], **tab})
        second = network({keys[0]: ids[:, 1], keys[1]: mask[:, 1], **tab})
        alone = torch.cat([network({keys[0]: ids[i:i + 1, :1], keys[1]: mask[i:i + 1, :1],
                                    **{k: v[i:i + 1] for k, v in tab.items()}}) for i in range(3)])
    assert torch.equal(chunked, first)
    torch.testing.assert_close(alone, chunked, rtol=1e-5, atol=1e-5)  # batch size changes float rounding only
    assert not torch.allclose(first[:2], second[:2], atol=1e-4)  # the later chunks are really ignored


def test_bert_also_reads_the_references_unprefixed_keys(tmp_path: Path) -> None:
    network, _ = load_pytorch_model(build_model_dir(tmp_path / "m", "bert"))
    ids = torch.randint(5, len(VOCAB), (2, TOKENS))
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        prefixed = network({f"{TEXT}_input_ids": ids, f"{TEXT}_attention_mask": mask})
        reference = network({TEXT: ids, "attention_mask": mask})
    assert torch.equal(prefixed, reference)


def test_the_handler_equals_a_direct_forward_pass(model_dir: Path, handler: PyTorchHandler) -> None:
    records: list[Mapping[str, Any]] = [SHORT, LONG, {**SHORT, TEXT: "", "amount": None}]
    assert [len(handler.encode_record(r)[0][TEXT]) for r in records] == [1, 3, 1]
    want = direct_probabilities(model_dir, records, handler)
    got = handler.predict_records(records)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert scores(handler, records) == pytest.approx(want[:, 1].tolist(), abs=1e-6)


def test_a_records_score_never_depends_on_its_batch_mates(handler: PyTorchHandler) -> None:
    records: list[Mapping[str, Any]] = [LONG, SHORT, {**LONG, "amount": 3.0}, {**SHORT, TEXT: "[bom] ok bye [eom]"}]
    together = scores(handler, records)
    alone = [scores(handler, [r])[0] for r in records]
    assert together == pytest.approx(alone, abs=1e-6)
    first_chunk_only = {**LONG, TEXT: "[bom] where is my package? my order is late. [eom]"}
    assert scores(handler, [first_chunk_only]) == pytest.approx(scores(handler, [LONG]), abs=1e-6)


# ------------------------------------------------------------------------------------ ONNX and serving


def test_onnx_export_is_served_like_the_pytorch_network(model_dir: Path, tmp_path: Path) -> None:
    import onnxruntime

    target = tmp_path / "model.onnx"
    report = export_onnx(model_dir, output=target)
    session = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    if load_model_class(model_dir) == "bert":  # the text field alone, any chunk length
        assert list(report.inputs) == names == [f"{TEXT}_input_ids", f"{TEXT}_attention_mask"]
        assert session.get_inputs()[0].shape == ["batch", f"{TEXT}_chunks", f"{TEXT}_tokens"]
    else:  # no mask (the CNN reads none), chunks of exactly max_sen_len tokens
        assert list(report.inputs) == names == [f"{TEXT}_input_ids", *TAB]
        assert session.get_inputs()[0].shape == ["batch", f"{TEXT}_chunks", TOKENS]
    assert report.max_abs_diff <= 1e-4

    served = tmp_path / "served"
    served.mkdir()
    for item in model_dir.iterdir():
        (served / item.name).symlink_to(item)
    (served / "model.onnx").symlink_to(target)
    onnx_handler = PyTorchHandler(served, device="cpu")
    onnx_handler.load()
    torch_handler = PyTorchHandler(model_dir, use_onnx=False, device="cpu")
    torch_handler.load()
    assert onnx_handler.network is not None and onnx_handler.network.kind == "onnx"
    records: list[Mapping[str, Any]] = [SHORT, LONG, {**LONG, "count": 7}]
    np.testing.assert_allclose(onnx_handler.predict_records(records), torch_handler.predict_records(records),
                               rtol=0, atol=1e-5)


def load_model_class(model_dir: Path) -> str:
    return str(json.loads((model_dir / "hyperparameters.json").read_text())["model_class"])


@pytest.mark.slow
def test_mainsail_serve_serves_it(model_dir: Path, handler: PyTorchHandler, home: Path) -> None:
    body = json.dumps([SHORT, LONG]).encode()
    want = handler.invoke(Invocation(body, JSON, JSON)).body
    with ServerProcess([str(model_dir), "--workers", "1"], home=home) as server:
        r = httpx.post(server.url + "/invocations", content=body, headers={"content-type": JSON, "accept": JSON})
        assert r.status_code == 200, r.text
        got = [float(p["legacy-score"]) for p in r.json()["predictions"]]
        csv = httpx.post(server.url + "/invocations", content=b"12.5,2,[bom] hello my order is late [eom]\n",
                         headers={"content-type": "text/csv", "accept": "text/csv"})
        assert csv.status_code == 200, csv.text
    assert got == pytest.approx([float(p["legacy-score"]) for p in json.loads(want)["predictions"]], abs=1e-6)
    assert float(csv.text.split(",")[0]) == pytest.approx(round(got[0], 4), abs=1e-4)
    assert "pytorch handler: pytorch network" in server.log()
