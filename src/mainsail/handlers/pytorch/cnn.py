"""Plain-torch versions of the reference pipeline's CNN networks (cursus bsm_pytorch): the TextCNN
subnetwork and ``BimodalCNN`` (``bimodal_cnn``).

Same contract as :mod:`mainsail.handlers.pytorch.models` (strict-loadable ``state_dict`` keys, the
reference's batches, inference only): the word embeddings come from ``config["embedding_mat"]``
(``model_artifacts.pth``'s matrix; the reference builds its CNN from them, then overwrites them from
``model.pth`` too), and chunked input is cut to each record's first chunk.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import torch
from torch import Tensor, nn

from mainsail.handlers.pytorch.models import (
    ModelConfig,
    MultimodalBase,
    batch_tensor,
    bert_config_of,
    first_chunk,
    require,
    text_input_keys,
)


def _setting(config: ModelConfig, key: str, default: Any) -> Any:
    """``config[key]``, or the reference's default when the key is absent or null."""
    value = config.get(key)
    return default if value is None else value



def _conv_output_length(tokens: int, kernel: int, layers: int) -> int:
    """The sequence length left after ``layers`` x (Conv1d(kernel), MaxPool1d(kernel)) but the last pool,
    as the reference computes it (the last layer pools over all of it); ValueError when nothing is left."""
    length = tokens
    for layer in range(layers):
        length = length - kernel + 1
        if layer < layers - 1:
            length = (length - kernel) // kernel + 1
        if length < 1:
            raise ValueError(f"max_sen_len {tokens} is too short for {layers} conv layers of kernel size {kernel}")
    return length


class TextCNNSubnetwork(nn.Module):
    """The reference TextCNN: word embeddings, one Conv1d stack per kernel size, max pooling, a linear head.

    Keys: ``embeddings.weight`` [vocab, E]; per kernel size k (in ``kernel_size`` order) ``convs.<i>``,
    a Sequential of ``num_layers`` x (Conv1d, ReLU, MaxPool1d) whose convolutions sit at ``.0``, ``.3``,
    ...: layer j maps ``[E, *num_channels][j]`` -> ``num_channels[j]`` channels, pools with window k
    between layers and over the whole remaining length after the last one; ``network.1``
    Linear(num_channels[-1] * len(kernel_size) -> hidden_common_dim) after Dropout; and the buffers
    ``class_weights_tensor`` / ``loss_op.weight`` (the config's ``class_weights`` as given, unpadded).
    Sequences must hold exactly ``max_sen_len`` tokens (the reference's pooling window depends on it).
    """

    def __init__(self, config: ModelConfig, embedding: Tensor, input_ids_key: str, num_classes: int) -> None:
        super().__init__()
        self.input_ids_key = input_ids_key
        if embedding.dim() != 2:
            raise ValueError(f"the embedding matrix must be [vocab, embed]; got {tuple(embedding.shape)}")
        vocab_size, embed_size = (int(n) for n in embedding.shape)
        self.max_sen_len = int(_setting(config, "max_sen_len", 512))
        kernel_sizes = [int(k) for k in _setting(config, "kernel_size", [3, 5, 7])]
        num_layers = int(_setting(config, "num_layers", 2))
        channels = [int(c) for c in _setting(config, "num_channels", [100, 100])]
        if not kernel_sizes or num_layers < 1 or len(channels) < num_layers:
            raise ValueError(f"kernel_size {kernel_sizes}, num_layers {num_layers} and num_channels {channels} "
                             "need at least one kernel and one channel count per layer")
        self.embeddings = nn.Embedding(vocab_size, embed_size)
        with torch.no_grad():
            self.embeddings.weight.copy_(embedding)
        inputs = [embed_size, *channels[:-1]]
        stacks = []
        for kernel in kernel_sizes:
            final_length = _conv_output_length(self.max_sen_len, kernel, num_layers)
            layers: list[nn.Module] = []
            for layer in range(num_layers):
                last = layer == num_layers - 1
                layers += [nn.Conv1d(inputs[layer], channels[layer], kernel), nn.ReLU(),
                           nn.MaxPool1d(final_length if last else kernel)]
            stacks.append(nn.Sequential(*layers))
        self.convs = nn.ModuleList(stacks)
        self.output_dim = int(_setting(config, "hidden_common_dim", 100))
        self.network = nn.Sequential(nn.Dropout(float(_setting(config, "dropout_keep", 0.5))),
                                     nn.Linear(channels[num_layers - 1] * len(kernel_sizes), self.output_dim))
        weights = [float(w) for w in _setting(config, "class_weights", [1.0] * num_classes)]
        self.register_buffer("class_weights_tensor", torch.tensor(weights, dtype=torch.float32))
        self.loss_op = nn.CrossEntropyLoss(weight=torch.tensor(weights, dtype=torch.float32))

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        """The batch's text field (first chunks, ``max_sen_len`` tokens) -> (B, hidden_common_dim)."""
        input_ids = first_chunk(batch_tensor(batch, self.input_ids_key), self.input_ids_key)
        if input_ids.shape[1] != self.max_sen_len:
            raise ValueError(f"{self.input_ids_key} has {input_ids.shape[1]} tokens a chunk; this CNN was built "
                             f"for max_sen_len {self.max_sen_len}")
        x = self.embeddings(input_ids).permute(0, 2, 1)  # (B, E, T)
        features = torch.cat([conv(x).squeeze(2) for conv in self.convs], dim=1)
        return cast(Tensor, self.network(features))


def embedding_of(config: ModelConfig) -> Tensor:
    """The CNN's initial word embeddings: ``config["embedding_mat"]`` (``model_artifacts.pth``'s matrix),
    else zeros shaped [vocab_size, hidden_size] of ``bert_config`` (the encoder that matrix is taken from)."""
    matrix = config.get("embedding_mat")
    if isinstance(matrix, Tensor):
        return matrix.detach()
    if config.get("bert_config") is None:
        raise ValueError("config needs 'embedding_mat' (from model_artifacts.pth) or 'bert_config' for the "
                         "CNN's word embeddings")
    encoder = bert_config_of(config)
    return torch.zeros(int(encoder.vocab_size), int(encoder.hidden_size))


class BimodalCNN(MultimodalBase):
    """The reference BimodalCNN (``bimodal_cnn``): one text field through a TextCNN plus the tab fields.

    Keys: ``text_subnetwork.*`` (:class:`TextCNNSubnetwork`, its own loss buffers included),
    ``tab_subnetwork.*`` (when ``tab_field_list`` is non-empty), ``final_merge_network.1``
    Linear(hidden_common_dim + tab width -> classes) after a ReLU, and the two loss buffers. Needs
    ``text_name`` and an embedding matrix (:func:`embedding_of`); chunked input is cut to each record's
    first chunk (:func:`~mainsail.handlers.pytorch.models.first_chunk`).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        ids_key, _ = text_input_keys(config, str(require(config, "text_name")))
        self.text_subnetwork = TextCNNSubnetwork(config, embedding_of(config), ids_key, self.num_classes)
        self.final_merge_network = nn.Sequential(
            nn.ReLU(), nn.Linear(self.text_subnetwork.output_dim + self.tab_dim, self.num_classes)
        )
        self._register_loss_buffers()

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        """The reference batch -> logits (B, classes); concat order text, tab."""
        return cast(Tensor, self.final_merge_network(self._with_tab([self.text_subnetwork(batch)], batch)))
