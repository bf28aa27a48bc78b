"""Write the streaming example's model directory: a small GPT-2 (random weights, seeded) over a
character vocabulary, with ``code/inference.py``. ``python examples/streaming/build.py DIR``."""

from __future__ import annotations

import json
import shutil
import string
import sys
from pathlib import Path

VOCAB = list(string.ascii_lowercase + " .,!?")


def build(model_dir: Path, seed: int = 0) -> Path:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    model_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(VOCAB), n_positions=256, n_embd=32, n_layer=2, n_head=2,
                        bos_token_id=0, eos_token_id=0)
    GPT2LMHeadModel(config).save_pretrained(str(model_dir))
    (model_dir / "vocab.json").write_text(json.dumps(VOCAB))
    shutil.copytree(Path(__file__).parent / "code", model_dir / "code", dirs_exist_ok=True)
    return model_dir


if __name__ == "__main__":
    print(build(Path(sys.argv[1] if len(sys.argv) > 1 else "streaming-model")))
