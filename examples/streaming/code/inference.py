"""A streaming inference script: a small GPT-2 language model writes text token by token, and each
token is sent to the client as soon as it is generated (transform_fn returns a generator).

Request: JSON ``{"prompt": "...", "max_new_tokens": 20}``. Answer: the new text, streamed as plain
text. Served by ``mainsail serve`` as a chunked HTTP response, and through ``mainsail up`` to
``InvokeEndpointWithResponseStream`` (boto3, ``mainsail invoke --stream``, ``Endpoint.invoke_stream``).
The vocabulary is characters (``vocab.json``), so no tokenizer download is needed.
"""

import json
import os

import torch
from transformers import GPT2LMHeadModel


def model_fn(model_dir):
    with open(os.path.join(model_dir, "vocab.json")) as f:
        vocab = json.load(f)
    model = GPT2LMHeadModel.from_pretrained(model_dir)
    model.eval()
    return model, vocab


def generate(model, vocab, prompt, max_new_tokens):
    """Greedy decoding, one token at a time (the whole text fed again at each step: the model is small)."""
    index = {ch: i for i, ch in enumerate(vocab)}
    ids = [index.get(ch, 0) for ch in prompt] or [0]
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = model(input_ids=torch.tensor([ids[-model.config.n_positions:]])).logits
            next_id = int(logits[0, -1].argmax())
            ids.append(next_id)
            yield vocab[next_id]


def transform_fn(model_and_vocab, body, content_type, accept):
    model, vocab = model_and_vocab
    request = json.loads(body)
    tokens = generate(model, vocab, request.get("prompt", ""), int(request.get("max_new_tokens", 20)))
    return tokens, "text/plain"
