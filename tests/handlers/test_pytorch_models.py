"""The reference (cursus) PyTorch networks: strict loading of a real model directory, parity with its ONNX
export, batch independence of the chunk mean, the model-class registry and safe (weights_only) loading."""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.torch_version import TorchVersion

from mainsail.errors import ModelLoadError
from mainsail.handlers.pytorch import (
    BimodalBert,
    ModelRegistry,
    TrimodalBert,
    default_model_registry,
    load_model_artifacts,
    load_pytorch_model,
)
from tests.conftest import CURSUS_FIXTURE

FIXTURE = CURSUS_FIXTURE / "model"
TAB = ["num1", "num2", "num3", "num4"]
TINY_BERT = {"vocab_size": 40, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
             "intermediate_size": 64, "max_position_embeddings": 32}


@pytest.fixture(scope="module")
def fixture_model() -> tuple[nn.Module, dict[str, Any]]:
    return load_pytorch_model(FIXTURE)


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(FIXTURE / "tinybert"), local_files_only=True)


@pytest.fixture(scope="module")
def onnx_session() -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(str(FIXTURE / "model.onnx"), providers=["CPUExecutionProvider"])


def chunks(tokenizer: Any, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """One record's chunks, tokenized as the reference does (max_sen_len 32, padded to max_length)."""
    enc = tokenizer(texts, max_length=32, padding="max_length", truncation=True, return_tensors="np")
    return enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)


def reference_batch(tokenizer: Any, records: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """The reference collate: chunk tensors (B, C, 32) padded with all-zero chunks, tab fields (B, 1)."""
    batch: dict[str, np.ndarray] = {}
    for field in ("dialogue", "shiptrack"):
        encoded = [chunks(tokenizer, r[field]) for r in records]
        most = max(ids.shape[0] for ids, _ in encoded)
        ids = np.zeros((len(records), most, 32), dtype=np.int64)
        mask = np.zeros_like(ids)
        for i, (rid, rmask) in enumerate(encoded):
            ids[i, : rid.shape[0]], mask[i, : rmask.shape[0]] = rid, rmask
        batch[f"{field}_input_ids"], batch[f"{field}_attention_mask"] = ids, mask
    for name in TAB:
        batch[name] = np.array([[r[name]] for r in records], dtype=np.float32)
    return batch


def torch_probs(model: nn.Module, batch: Mapping[str, np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        logits = model({k: torch.from_numpy(v) for k, v in batch.items()})
    return torch.softmax(logits, dim=1).numpy()


def onnx_probs(session: Any, batch: Mapping[str, np.ndarray]) -> np.ndarray:
    feeds = {i.name: batch[i.name] for i in session.get_inputs()}
    return np.asarray(session.run(["probs"], feeds)[0])


RECORDS = [
    {"dialogue": ["[bom] hello there [eom]"], "shiptrack": ["[bom] shipped [eom]"],
     "num1": 57.2, "num2": 3.0, "num3": 4.5, "num4": 0.1},
    {"dialogue": ["[bom] where is my package [eom]", "[bom] it never arrived [eom]"],
     "shiptrack": ["[bom] delivered to door [eom]"], "num1": -1.0, "num2": 10.0, "num3": 0.0, "num4": 2.5},
    {"dialogue": ["[bom] refund please [eom]", "[bom] item damaged [eom]", "[bom] thanks [eom]"],
     "shiptrack": ["[bom] in transit [eom]", "[bom] delayed [eom]"],
     "num1": 120.0, "num2": 0.5, "num3": 8.0, "num4": 0.0},
]


# ----------------------------------------------------------------- the real reference model directory


def test_fixture_loads_strictly_as_trimodal_bert(fixture_model: tuple[nn.Module, dict[str, Any]]) -> None:
    model, config = fixture_model
    assert isinstance(model, TrimodalBert) and not model.training
    assert config["model_class"] == "trimodal_bert" and config["tab_field_list"] == TAB
    reference = torch.load(FIXTURE / "model.pth", weights_only=True)
    assert list(model.state_dict()) == list(reference)  # same keys, same order as the reference module
    assert all(torch.equal(v, reference[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("index", range(len(RECORDS)))
def test_single_record_matches_onnx_export(fixture_model: tuple[nn.Module, dict[str, Any]], tokenizer: Any,
                                           onnx_session: Any, index: int) -> None:
    batch = reference_batch(tokenizer, [RECORDS[index]])  # every chunk real: the reference's single-record path
    expected, got = onnx_probs(onnx_session, batch), torch_probs(fixture_model[0], batch)
    assert got.shape == (1, 2)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_equal_chunk_batch_matches_onnx_export(fixture_model: tuple[nn.Module, dict[str, Any]], tokenizer: Any,
                                               onnx_session: Any) -> None:
    records = [RECORDS[0], {**RECORDS[0], "num1": 3.0, "dialogue": ["[bom] another one [eom]"]}]
    batch = reference_batch(tokenizer, records)  # no padding chunks: the reference's batch agrees too
    np.testing.assert_allclose(torch_probs(fixture_model[0], batch), onnx_probs(onnx_session, batch),
                               rtol=0, atol=1e-5)


def test_score_does_not_depend_on_batch_mates(fixture_model: tuple[nn.Module, dict[str, Any]], tokenizer: Any,
                                              onnx_session: Any) -> None:
    model = fixture_model[0]
    alone = [torch_probs(model, reference_batch(tokenizer, [r])) for r in RECORDS]
    together = torch_probs(model, reference_batch(tokenizer, RECORDS))  # records 0 and 1 get padding chunks
    np.testing.assert_allclose(together, np.concatenate(alone), rtol=0, atol=1e-6)
    # the reference (its ONNX export) averages the padding chunks in, so its batch answer differs
    reference_together = onnx_probs(onnx_session, reference_batch(tokenizer, RECORDS))
    assert np.abs(reference_together[0] - alone[0][0]).max() > 1e-4


def test_record_without_valid_chunks_is_batch_independent(fixture_model: tuple[nn.Module, dict[str, Any]],
                                                          tokenizer: Any) -> None:
    model = fixture_model[0]
    empty = reference_batch(tokenizer, [RECORDS[0]])
    empty["dialogue_input_ids"][:] = 0
    empty["dialogue_attention_mask"][:] = 0
    mate = reference_batch(tokenizer, [RECORDS[2]])
    batch = {}
    for key, value in empty.items():
        other = mate[key]
        if value.ndim == 3:
            padded = np.zeros((1, other.shape[1], 32), dtype=np.int64)
            padded[:, : value.shape[1]] = value
            value = padded
        batch[key] = np.concatenate([value, other])
    np.testing.assert_allclose(torch_probs(model, batch)[0], torch_probs(model, empty)[0], rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------- safe artifact loading


class Payload:
    """A class that is not on any allowlist: unpickling it must be refused."""

    ran = False

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return (_mark_ran, ())


def _mark_ran() -> None:
    Payload.ran = True


def test_fixture_artifacts_load_with_weights_only() -> None:
    artifacts = load_model_artifacts(FIXTURE / "model_artifacts.pth")
    assert artifacts["model_class"] == "trimodal_bert"
    assert type(artifacts["torch_version"]) is str  # the TorchVersion object, as a plain string
    assert artifacts["config"]["tokenizer"] == "tinybert" and len(artifacts["vocab"]) == 171


def test_artifacts_with_a_disallowed_global_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "model_artifacts.pth"
    torch.save({"config": {}, "torch_version": TorchVersion("2.1.0"), "extra": Payload()}, path)
    with pytest.raises(ModelLoadError, match="weights_only"):
        load_model_artifacts(path)
    assert not Payload.ran
    with pytest.raises(ModelLoadError, match="not found"):
        load_model_artifacts(tmp_path / "absent.pth")


# ---------------------------------------------------------------------------------------- registry


def test_default_registry_names_and_aliases() -> None:
    registry = default_model_registry()
    assert registry.names() == ["bert", "bimodal", "bimodal_bert", "bimodal_cnn", "multimodal_bert", "multimodal_cnn",
                                "trimodal", "trimodal_bert"]
    assert registry.resolve("multimodal_bert") == registry.resolve(" Bimodal ") == "bimodal_bert"
    assert registry.resolve("trimodal") == "trimodal_bert"
    assert registry.aliases("bimodal_bert") == ["bimodal", "multimodal_bert"]
    assert default_model_registry() is not registry  # a fresh instance each time, nothing global


@pytest.mark.parametrize("name", ["trimodal_gate_fusion", "trimodal_cross_attn_bert", "bimodal_moe", "lstm"])
def test_different_architectures_are_not_aliases(name: str) -> None:
    with pytest.raises(ModelLoadError, match="does not implement") as info:
        default_model_registry().resolve(name)
    assert "bimodal_bert" in info.value.message and "trimodal_bert" in info.value.message


def test_unknown_class_names_the_known_ones() -> None:
    with pytest.raises(ModelLoadError, match=r"unknown model_class 'xformer'.*bert, bimodal, bimodal_bert"):
        default_model_registry().create("xformer", {})


def test_user_registered_class_and_duplicates() -> None:
    registry = default_model_registry()
    registry.register("linear_probe", lambda config: nn.Linear(int(config["width"]), 2), aliases=("probe",))
    model = registry.create("PROBE", {"width": 3})
    assert isinstance(model, nn.Linear) and model.in_features == 3
    with pytest.raises(ValueError, match="already registered"):
        registry.register("other", BimodalBert, aliases=("trimodal",))
    with pytest.raises(ModelLoadError, match="cannot build model_class 'linear_probe'"):
        registry.create("probe", {})


# --------------------------------------------------------------------- bimodal, built from a tiny config


def bimodal_config(**overrides: Any) -> dict[str, Any]:
    from transformers import BertConfig

    config: dict[str, Any] = {"text_name": "chat", "tab_field_list": ["a", "b"], "hidden_common_dim": 8,
                              "is_binary": True, "num_classes": 2, "class_weights": [1.0, 4.0],
                              "bert_config": BertConfig(**TINY_BERT)}
    return config | overrides


def test_bimodal_layout_and_strict_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = BimodalBert(bimodal_config()).eval()
    state = model.state_dict()
    assert {k.split(".")[0] for k in state} == {"text_subnetwork", "tab_subnetwork", "final_merge_network",
                                                "class_weights_tensor", "loss_op"}
    assert state["text_subnetwork.head_layer.1.weight"].shape == (8, 32)
    assert state["final_merge_network.1.weight"].shape == (2, 16)
    assert state["tab_subnetwork.embedding_layer.0.weight"].shape == (2,)
    assert not any("position_ids" in k for k in state)
    torch.save(state, tmp_path / "model.pth")
    clone = BimodalBert(bimodal_config()).eval()
    clone.load_state_dict(torch.load(tmp_path / "model.pth", weights_only=True), strict=True)
    batch = {"chat_input_ids": torch.randint(1, 40, (2, 2, 10)), "chat_attention_mask": torch.ones(2, 2, 10,
             dtype=torch.int64), "a": torch.tensor([1.0, 2.0]), "b": torch.tensor([[0.5], [-0.5]])}
    with torch.no_grad():
        torch.testing.assert_close(clone(batch), model(batch))
    multiclass = BimodalBert(bimodal_config(is_binary=False, num_classes=3, tab_field_list=[]))
    assert multiclass.state_dict()["class_weights_tensor"].tolist() == [1.0, 4.0, 1.0]
    assert multiclass.final_merge_network[1].weight.shape == (3, 8)


def bimodal_directory(model_dir: Path, model_class: str) -> Path:
    from transformers import BertConfig

    config = {k: v for k, v in bimodal_config().items() if k != "bert_config"} | {"tokenizer": "enc"}
    BertConfig(**TINY_BERT).save_pretrained(model_dir / "enc")
    torch.save({"config": config, "model_class": model_class, "torch_version": TorchVersion("2.1.0"),
                "embedding_mat": nn.Parameter(torch.zeros(40, 32)), "vocab": {"a": 1}}, model_dir / "model_artifacts.pth")
    torch.save(BimodalBert(bimodal_config()).state_dict(), model_dir / "model.pth")
    return model_dir


def test_bimodal_model_directory_loads(tmp_path: Path) -> None:
    model, loaded = load_pytorch_model(bimodal_directory(tmp_path, "multimodal_bert"))
    assert isinstance(model, BimodalBert) and loaded["model_class"] == "multimodal_bert"
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_loader_uses_the_given_registry(tmp_path: Path) -> None:
    model_dir = bimodal_directory(tmp_path, "house_bimodal")
    with pytest.raises(ModelLoadError, match="unknown model_class 'house_bimodal'"):
        load_pytorch_model(model_dir)
    registry = ModelRegistry()
    assert registry.names() == []
    registry.register("house_bimodal", BimodalBert)
    assert isinstance(load_pytorch_model(model_dir, registry)[0], BimodalBert)


# --------------------------------------------------------------------------------- loader failures


def fixture_copy(tmp_path: Path, **artifact_changes: Any) -> Path:
    """A writable model directory sharing the fixture's weights and encoder, with altered artifacts."""
    shutil.copyfile(FIXTURE / "model.pth", tmp_path / "model.pth")
    (tmp_path / "tinybert").symlink_to(FIXTURE / "tinybert")
    artifacts = load_model_artifacts(FIXTURE / "model_artifacts.pth")
    config = artifacts["config"] | artifact_changes.pop("config", {})
    torch.save(artifacts | {"config": config} | artifact_changes, tmp_path / "model_artifacts.pth")
    return tmp_path


def test_weights_of_another_class_name_the_mismatch(tmp_path: Path) -> None:
    model_dir = fixture_copy(tmp_path, model_class="bimodal", config={"text_name": "dialogue"})
    with pytest.raises(ModelLoadError) as info:
        load_pytorch_model(model_dir)
    message = info.value.message
    assert "missing: final_merge_network.1.bias, final_merge_network.1.weight, text_subnetwork.bert." in message
    assert "unexpected: final_merge_network.2.bias" in message and "primary_text_subnetwork.bert." in message
    assert "(+38 more)" in message and "look like a trimodal_bert network" in message


def test_unknown_class_in_artifacts(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="unknown model_class 'trimodal_gate_fusion'"):
        load_pytorch_model(fixture_copy(tmp_path, model_class="trimodal_gate_fusion"))


def test_missing_files_and_encoder(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="model directory not found"):
        load_pytorch_model(tmp_path / "nowhere")
    with pytest.raises(ModelLoadError, match="model artifacts not found"):
        load_pytorch_model(tmp_path)
    model_dir = fixture_copy(tmp_path, config={"tokenizer": "no-such-encoder"})
    with pytest.raises(ModelLoadError, match="encoder config for tokenizer 'no-such-encoder'"):
        load_pytorch_model(model_dir)
    (model_dir / "model.pth").unlink()
    with pytest.raises(ModelLoadError, match="model weights not found"):
        load_pytorch_model(model_dir)


def test_model_class_falls_back_to_hyperparameters(tmp_path: Path) -> None:
    from transformers import BertConfig

    config = {k: v for k, v in bimodal_config().items() if k != "bert_config"} | {"tokenizer": "enc"}
    BertConfig(**TINY_BERT).save_pretrained(tmp_path / "enc")
    torch.save({"config": config}, tmp_path / "model_artifacts.pth")
    torch.save(BimodalBert(bimodal_config()).state_dict(), tmp_path / "model.pth")
    with pytest.raises(ModelLoadError, match="no model_class"):
        load_pytorch_model(tmp_path)
    (tmp_path / "hyperparameters.json").write_text(json.dumps({"model_class": "bimodal_bert"}))
    assert isinstance(load_pytorch_model(tmp_path)[0], BimodalBert)
