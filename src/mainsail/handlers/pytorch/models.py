"""Plain-torch versions of the reference pipeline's BERT-based networks (cursus bsm_pytorch), and the
parts every network shares (config readers, the tab subnetwork, :class:`MultimodalBase`); the CNN
networks built on them are in :mod:`mainsail.handlers.pytorch.cnn`.

Each class here has the same ``state_dict`` keys and shapes as its Lightning counterpart, so the
``model.pth`` the reference training writes loads with ``load_state_dict(strict=True)``; nothing here
imports Lightning. Only inference is kept: no optimiser, metrics or loss computation. The buffers
``class_weights_tensor`` and ``loss_op.weight`` exist only because the reference saves them and a
strict load requires them.

Models take one ``config`` mapping: the reference's ``Config`` dump (``model_artifacts.pth["config"]``)
plus ``bert_config``, the :class:`transformers.BertConfig` of the encoder, read from the tokenizer's
``config.json`` (the reference builds its encoder with ``AutoModel.from_pretrained(config["tokenizer"])``
and then overwrites every weight from ``model.pth``), and for the CNN ``embedding_mat``, the word
embeddings saved in ``model_artifacts.pth`` (its reference is built from them, then overwritten too).

Batches are the reference's: ``<field>_<text_input_ids_key>`` and ``<field>_<text_attention_mask_key>``
int64 tensors shaped (B, C, T) (C chunks of T tokens; a (B, T) tensor is taken as one chunk), and one
float tensor per ``tab_field_list`` name, shaped (B,) or (B, 1). ``forward`` returns logits (B, classes).

Deviation from the reference: the reference averages the pooled output over ALL C chunks, including
the all-zero padding chunks the collate function adds to records with fewer chunks than their batch
mates, so a record's score depends on who shares its batch. Here the mean runs over each record's
VALID chunks only (a chunk whose attention mask has any non-zero entry), and padding chunks are not
even run through BERT. For a record scored alone whose chunks are all real this equals the reference
(its single-record path, which the reference handler serves). A record with no valid chunk at all is
given its first chunk's pooled output, which is what the reference's mean gives it in any batch (all
its chunks are identical padding), so it too is independent of its batch mates.

The single-sequence networks (:class:`TextBertClassification`, ``bert``; ``cnn.BimodalCNN``,
``bimodal_cnn``) read one (B, T) sequence per record, as their reference ``forward`` does. Given the
chunked (B, C, T) batch they take each record's FIRST chunk (:func:`first_chunk`): the leading
``max_sen_len`` tokens of the processed text, which is what a (B, T) training loader feeds (see
docs/pytorch.md for why not a mean over chunks). A record's score therefore depends on nothing but its
own first chunk.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn
from transformers import BertConfig, BertForSequenceClassification, BertModel

ModelConfig = Mapping[str, Any]
"""A reference ``Config`` dump plus ``bert_config`` and ``embedding_mat`` (see the module docstring)."""


def num_classes_of(config: ModelConfig) -> int:
    """The output width the reference gives its networks: 2 when ``is_binary``, else ``num_classes``."""
    return 2 if config.get("is_binary", True) else int(config.get("num_classes", 2))


def text_input_keys(config: ModelConfig, field: str) -> tuple[str, str]:
    """The batch keys ``(<field>_input_ids, <field>_attention_mask)`` with the configured key suffixes."""
    ids_key = config.get("text_input_ids_key") or "input_ids"
    mask_key = config.get("text_attention_mask_key") or "attention_mask"
    return f"{field}_{ids_key}", f"{field}_{mask_key}"


def bert_config_of(config: ModelConfig) -> BertConfig:
    """The encoder's ``BertConfig`` from ``config["bert_config"]`` (a BertConfig or a config.json dict)."""
    value = config.get("bert_config")
    if isinstance(value, BertConfig):
        return value
    if isinstance(value, Mapping):
        return BertConfig(**dict(value))
    raise ValueError(
        "config needs 'bert_config' (the encoder's BertConfig, read from the tokenizer folder's config.json); "
        f"got {type(value).__name__}"
    )


def require(config: ModelConfig, key: str) -> Any:
    """``config[key]``; ValueError when it is absent, null or empty."""
    value = config.get(key)
    if value is None or value == "":
        raise ValueError(f"config needs {key!r} for this model class")
    return value


def batch_tensor(batch: Mapping[str, Tensor], key: str) -> Tensor:
    """``batch[key]``; a KeyError names the keys the batch has."""
    try:
        return batch[key]
    except KeyError:
        raise KeyError(f"batch has no {key!r}; it has {sorted(batch)}") from None


class TabularSubnetwork(nn.Module):
    """The reference TabAE: LayerNorm(n) -> Linear(n, hidden_common_dim) -> ReLU over the tab fields.

    Keys: ``embedding_layer.0`` (LayerNorm), ``embedding_layer.1`` (Linear). ``combine`` stacks the
    ``tab_field_list`` values of a batch, in list order, into a (B, n) float32 tensor.
    """

    def __init__(self, tab_field_list: Sequence[str], hidden_common_dim: int) -> None:
        super().__init__()
        if not tab_field_list:
            raise ValueError("tab_field_list must not be empty")
        self.tab_field_list = list(tab_field_list)
        n = len(self.tab_field_list)
        self.output_dim = int(hidden_common_dim)
        self.embedding_layer = nn.Sequential(nn.LayerNorm(n), nn.Linear(n, self.output_dim), nn.ReLU())

    def combine(self, batch: Mapping[str, Tensor]) -> Tensor:
        """The (B, n) float32 matrix of the batch's tab fields; a KeyError names a missing field."""
        columns = []
        for field in self.tab_field_list:
            value = torch.as_tensor(batch_tensor(batch, field), dtype=torch.float32)
            columns.append(value.unsqueeze(1) if value.dim() == 1 else value)
        return torch.cat(columns, dim=1)

    def forward(self, features: Tensor) -> Tensor:
        """(B, n) features -> (B, hidden_common_dim) embedding."""
        return cast(Tensor, self.embedding_layer(features))


class TextBertSubnetwork(nn.Module):
    """The reference TextBertBase: BERT pooled output per chunk, mean over chunks, Dropout + Linear head.

    Keys: ``bert.*`` (a full ``BertModel`` with pooler), ``head_layer.1`` Linear(bert hidden ->
    hidden_common_dim). The chunk mean runs over valid chunks only (module docstring).
    """

    def __init__(self, bert_config: BertConfig, hidden_common_dim: int, input_ids_key: str,
                 attention_mask_key: str) -> None:
        super().__init__()
        self.input_ids_key = input_ids_key
        self.attention_mask_key = attention_mask_key
        self.bert = BertModel(bert_config, add_pooling_layer=True)
        self.output_dim = int(hidden_common_dim)
        self.head_layer = nn.Sequential(nn.Dropout(0.1), nn.Linear(bert_config.hidden_size, self.output_dim))

    def pooled_chunk_mean(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """(B, C, T) ids and mask -> (B, bert hidden): mean pooled output over each record's valid chunks."""
        if input_ids.dim() == 2:
            input_ids, attention_mask = input_ids.unsqueeze(1), attention_mask.unsqueeze(1)
        if input_ids.dim() != 3 or input_ids.shape != attention_mask.shape:
            raise ValueError(
                f"{self.input_ids_key} and {self.attention_mask_key} must both be (batch, chunks, tokens); "
                f"got {tuple(input_ids.shape)} and {tuple(attention_mask.shape)}"
            )
        b, c, t = input_ids.shape
        hidden = int(self.bert.config.hidden_size)
        if b == 0:
            return input_ids.new_zeros((0, hidden), dtype=torch.float32)
        if c == 0 or t == 0:
            raise ValueError(f"{self.input_ids_key} has no chunks or no tokens: shape {tuple(input_ids.shape)}")
        used = (attention_mask != 0).any(dim=2)  # (B, C): the valid chunks
        used[~used.any(dim=1), 0] = True  # a record without any valid chunk keeps its first one
        flat_used = used.reshape(-1)
        outputs = self.bert(
            input_ids=input_ids.reshape(b * c, t)[flat_used],
            attention_mask=attention_mask.reshape(b * c, t)[flat_used],
        )
        pooled_used = cast(Tensor, outputs.pooler_output)
        pooled = pooled_used.new_zeros((b * c, hidden))
        pooled[flat_used] = pooled_used
        weights = used.to(pooled.dtype).unsqueeze(2)  # (B, C, 1)
        return (pooled.view(b, c, hidden) * weights).sum(dim=1) / weights.sum(dim=1)

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        """The batch's text field -> (B, hidden_common_dim)."""
        pooled = self.pooled_chunk_mean(
            batch_tensor(batch, self.input_ids_key), batch_tensor(batch, self.attention_mask_key)
        )
        return cast(Tensor, self.head_layer(pooled))


class MultimodalBase(nn.Module):
    """Shared parts: the optional tab subnetwork and the loss buffers strict loading needs."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.num_classes = num_classes_of(config)
        tab_fields = config.get("tab_field_list") or []
        self.tab_subnetwork: TabularSubnetwork | None = (
            TabularSubnetwork(tab_fields, int(require(config, "hidden_common_dim"))) if tab_fields else None
        )
        self._class_weights = [float(w) for w in (config.get("class_weights") or [])]

    def _register_loss_buffers(self) -> None:
        # Called last, so the state_dict keys come in the reference's order (its loss is built last).
        weights = (self._class_weights + [1.0] * self.num_classes)[: self.num_classes]  # the reference pads, cuts
        self.register_buffer("class_weights_tensor", torch.tensor(weights, dtype=torch.float32))
        self.loss_op = nn.CrossEntropyLoss(weight=torch.tensor(weights, dtype=torch.float32))

    @property
    def tab_dim(self) -> int:
        return self.tab_subnetwork.output_dim if self.tab_subnetwork is not None else 0

    def _with_tab(self, parts: list[Tensor], batch: Mapping[str, Tensor]) -> Tensor:
        if self.tab_subnetwork is not None:
            parts.append(self.tab_subnetwork(self.tab_subnetwork.combine(batch)))
        return torch.cat(parts, dim=1)


class BimodalBert(MultimodalBase):
    """The reference BimodalBert (``bimodal_bert``): one text field through BERT plus the tab fields.

    Keys: ``text_subnetwork.*``, ``tab_subnetwork.*`` (when ``tab_field_list`` is non-empty),
    ``final_merge_network.1`` Linear(hidden_common_dim * 2 -> classes) after a ReLU, and the two loss
    buffers. Needs ``text_name``, ``hidden_common_dim`` and ``bert_config`` in ``config``.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        ids_key, mask_key = text_input_keys(config, str(require(config, "text_name")))
        self.text_subnetwork = TextBertSubnetwork(
            bert_config_of(config), int(require(config, "hidden_common_dim")), ids_key, mask_key
        )
        self.final_merge_network = nn.Sequential(
            nn.ReLU(), nn.Linear(self.text_subnetwork.output_dim + self.tab_dim, self.num_classes)
        )
        self._register_loss_buffers()

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        """The reference batch -> logits (B, classes); concat order text, tab."""
        return cast(Tensor, self.final_merge_network(self._with_tab([self.text_subnetwork(batch)], batch)))


class TrimodalBert(MultimodalBase):
    """The reference TrimodalBert (``trimodal_bert``): two text fields, two BERTs, plus the tab fields.

    Keys: ``primary_text_subnetwork.*``, ``secondary_text_subnetwork.*``, ``tab_subnetwork.*``,
    ``final_merge_network`` = ReLU, Dropout, Linear(total -> F) [``.2``], ReLU, Dropout, Linear(F ->
    classes) [``.5``] with total = the sum of the three widths and F = ``fusion_hidden_dim`` or
    max(128, total // 2). Both encoders share ``bert_config`` (the reference's training Config has a
    single ``tokenizer``). Honours the reference's optional ``primary_hidden_common_dim`` /
    ``secondary_hidden_common_dim`` / ``fusion_hidden_dim`` / ``fusion_dropout`` keys.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        bert_config = bert_config_of(config)
        common = int(require(config, "hidden_common_dim"))
        subnetworks = []
        for role in ("primary", "secondary"):
            ids_key, mask_key = text_input_keys(config, str(require(config, f"{role}_text_name")))
            width = config.get(f"{role}_hidden_common_dim") or common
            subnetworks.append(TextBertSubnetwork(bert_config, int(width), ids_key, mask_key))
        self.primary_text_subnetwork, self.secondary_text_subnetwork = subnetworks
        total = sum(s.output_dim for s in subnetworks) + self.tab_dim
        fusion = int(config.get("fusion_hidden_dim") or max(128, total // 2))
        dropout = float(config.get("fusion_dropout", 0.1) or 0.0)
        self.final_merge_network = nn.Sequential(
            nn.ReLU(), nn.Dropout(dropout), nn.Linear(total, fusion),
            nn.ReLU(), nn.Dropout(dropout), nn.Linear(fusion, self.num_classes),
        )
        self._register_loss_buffers()

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        """The reference batch -> logits (B, classes); concat order primary, secondary, tab."""
        parts = [self.primary_text_subnetwork(batch), self.secondary_text_subnetwork(batch)]
        return cast(Tensor, self.final_merge_network(self._with_tab(parts, batch)))


# ------------------------------------------------------------------ single-sequence (first-chunk) networks


def first_chunk(tokens: Tensor, name: str) -> Tensor:
    """(B, C, T) chunked ids or mask -> (B, T), each record's first chunk; a (B, T) tensor is returned as is.

    Chunks are packed in text order and padding chunks only ever follow real ones, so the first chunk
    is the start of the record's text: the same for a record alone and in any batch.
    """
    if tokens.dim() == 2:
        return tokens
    if tokens.dim() != 3:
        raise ValueError(f"{name} must be (batch, chunks, tokens) or (batch, tokens); got {tuple(tokens.shape)}")
    if tokens.shape[1] == 0:
        raise ValueError(f"{name} has no chunks: shape {tuple(tokens.shape)}")
    return tokens[:, 0, :]


class TextBertClassification(nn.Module):
    """The reference TextBertClassification (``bert``): a text-only ``BertForSequenceClassification``.

    Keys: ``bert.bert.*`` (a full ``BertModel`` with pooler), ``bert.classifier`` Linear(bert hidden ->
    classes); no loss buffers (the reference's ``loss_op`` stays None). Needs ``text_name`` and
    ``bert_config``. Reads ``<text_name>_<ids key>`` / ``<text_name>_<mask key>`` (the handler's batch),
    else the reference's own un-prefixed keys ``<text_name>`` / ``<mask key>``; chunked input is cut to
    each record's first chunk (module docstring). ``forward`` returns the classifier's logits.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.num_classes = num_classes_of(config)
        text_name = str(require(config, "text_name"))
        self.input_ids_key, self.attention_mask_key = text_input_keys(config, text_name)
        self.reference_keys = (text_name, str(config.get("text_attention_mask_key") or "attention_mask"))
        head_config = copy.deepcopy(bert_config_of(config))
        head_config.num_labels = self.num_classes
        self.bert = BertForSequenceClassification(head_config)

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        """The batch's text field -> logits (B, classes)."""
        if self.input_ids_key in batch or self.reference_keys[0] not in batch:
            ids_key, mask_key = self.input_ids_key, self.attention_mask_key
        else:
            ids_key, mask_key = self.reference_keys
        input_ids = first_chunk(batch_tensor(batch, ids_key), ids_key)
        attention_mask = first_chunk(batch_tensor(batch, mask_key), mask_key)
        return cast(Tensor, self.bert(input_ids=input_ids, attention_mask=attention_mask).logits)
