"""The reference (cursus bsm_pytorch) text steps, each a named callable, quirks copied on purpose.

``DialogueSplitter`` ... ``Tokenize``: what a step list in ``hyperparameters.json`` names. They take
plain arguments (a tokenizer, lengths, keys) and know nothing of settings or registries;
:mod:`mainsail.features.text` builds them by name into pipelines.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from typing import Any

_DIALOGUE = re.compile(r"\[bom\](.*?)\[eom\]", flags=re.DOTALL)
_SPACES = re.compile(r"\s+")
_EMOJI = re.compile(
    "["
    "\U0001f600-\U0001f64f"  # emoticons
    "\U0001f300-\U0001f5ff"  # symbols & pictographs
    "\U0001f680-\U0001f6ff"  # transport & map symbols
    "\U0001f1e0-\U0001f1ff"  # flags
    "\U00002702-\U000027b0"  # dingbats
    "\U000024c2-\U0001f251"  # the reference's over-wide range: deletes CJK, Hangul, kana, ...
    "]+"
)
_CS_ROLE = re.compile(r"\[(bot|customer|agent)\]:")


class DialogueSplitter:
    """``str`` -> the stripped, non-empty ``[bom] ... [eom]`` messages (``[]`` without markers)."""

    name = "dialogue_splitter"

    def __call__(self, value: Any) -> list[str]:
        return [message.strip() for message in _DIALOGUE.findall(value) if message.strip()]


class HtmlNormalizer:
    """Per message (or on one string): the text of the HTML, text nodes stripped and joined by a space."""

    name = "html_normalizer"

    def __init__(self) -> None:
        from bs4 import BeautifulSoup

        self._soup = BeautifulSoup

    def _normalize(self, markup: str) -> str:
        if "<" not in markup and "&" not in markup:
            # No tag, no entity: html.parser sees one text node, which get_text(strip=True) strips.
            return markup.strip()
        # A file object parses the same markup but skips bs4's "looks like a URL/filename" warnings,
        # without touching the process-wide warning filters.
        return self._soup(io.StringIO(markup), "html.parser").get_text(separator=" ", strip=True)

    def __call__(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self._normalize(message) for message in value]
        return self._normalize(value)


class EmojiRemover:
    """Deletes the reference's emoji ranges, U+24C2..U+1F251 included (CJK, Hangul and kana go too)."""

    name = "emoji_remover"

    def __call__(self, value: Any) -> Any:
        if isinstance(value, list):
            return [_EMOJI.sub("", message) for message in value]
        return _EMOJI.sub("", value)


def _normalize_spaces(text: str, upper: bool) -> str:
    text = text.strip()
    return _SPACES.sub(" ", text.upper() if upper else text.lower())


class TextNormalizer:
    """Strip, lower-case and collapse whitespace runs to one space (per message, or one string)."""

    name = "text_normalizer"

    def __call__(self, value: Any) -> Any:
        if isinstance(value, list):
            return [_normalize_spaces(message, upper=False) for message in value]
        return _normalize_spaces(value, upper=False)


class TextUpper:
    """Strip, upper-case and collapse whitespace runs (one string only, as in the reference)."""

    name = "text_upper"

    def __call__(self, value: Any) -> str:
        if not isinstance(value, str):
            raise TypeError(f"text_upper takes one string, got {type(value).__name__}")
        return _normalize_spaces(value, upper=True)


class CsChatSplitter:
    """``str`` -> ``[{"role", "content"}]`` split on ``[bot]:``, ``[customer]:`` and ``[agent]:`` markers.

    Text before the first marker is dropped, contents are stripped and empty ones dropped.
    """

    name = "cs_chat_splitter"

    def __call__(self, value: Any) -> list[dict[str, str]]:
        markers = list(_CS_ROLE.finditer(value))
        messages: list[dict[str, str]] = []
        # The reference also looks for markers embedded in each content; there can be none, since
        # a content ends where the next marker starts.
        for index, marker in enumerate(markers):
            end = markers[index + 1].start() if index + 1 < len(markers) else len(value)
            content = value[marker.end() : end].strip()
            if content:
                messages.append({"role": marker.group(1), "content": content})
        return messages


class CsAdapter:
    """``[{"role", "content"}]`` -> ``["[role]: content"]`` (feeds dialogue_chunker after cs_chat_splitter)."""

    name = "cs_adapter"

    def __call__(self, value: Any) -> list[str]:
        return [f"[{message['role']}]: {message['content']}" for message in value]


class DialogueChunker:
    """Greedy packing of messages into chunks of at most ``max_tokens`` tokens (no special tokens).

    A message longer than ``max_tokens`` is cut to its first ``max_tokens`` ids and decoded back to
    text. A message that does not fit closes the current chunk (messages joined by one space). With
    ``truncate``, packing stops once ``max_total_chunks`` chunks are closed and the open chunk is kept
    only while fewer exist. No chunk (or only blank ones) gives ``["."]``.
    """

    name = "dialogue_chunker"

    def __init__(self, tokenizer: Any, max_tokens: int, truncate: bool, max_total_chunks: int) -> None:
        if tokenizer is None:
            raise ValueError("dialogue_chunker needs a tokenizer")
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.truncate = truncate
        self.max_total_chunks = max_total_chunks

    def __call__(self, value: Any) -> list[str]:
        messages = list(value)  # a plain string iterates by character, as in the reference
        counted = self.tokenizer(messages, add_special_tokens=False)["input_ids"] if messages else []
        return self._pack(messages, counted)

    def many(self, values: list[Any]) -> list[list[str]]:
        """Several values' chunks, with one tokenizer call counting every message of them all."""
        lists = [list(value) for value in values]
        flat = [message for messages in lists for message in messages]
        counted = self.tokenizer(flat, add_special_tokens=False)["input_ids"] if flat else []
        packed: list[list[str]] = []
        start = 0
        for messages in lists:
            packed.append(self._pack(messages, counted[start:start + len(messages)]))
            start += len(messages)
        return packed

    def _pack(self, messages: list[str], counted: Sequence[Sequence[int]]) -> list[str]:
        chunks: list[str] = []
        current: list[str] = []
        current_tokens = 0
        for message, ids in zip(messages, counted, strict=True):
            count = len(ids)
            if count > self.max_tokens:
                message = self.tokenizer.decode(ids[: self.max_tokens], skip_special_tokens=True)
                count = self.max_tokens
            if current_tokens + count > self.max_tokens:
                if current:
                    chunks.append(" ".join(current).strip())
                    if self._full(chunks):
                        break
                current = [message]
                current_tokens = count
            else:
                current.append(message)
                current_tokens += count
            if self._full(chunks):
                break
        if current and not self._full(chunks):
            chunks.append(" ".join(current).strip())
        if not any(chunk.strip() for chunk in chunks):
            return ["."]
        return chunks

    def _full(self, chunks: list[str]) -> bool:
        return self.truncate and len(chunks) >= self.max_total_chunks


class Tokenize:
    """Chunks -> one ``{input_ids_key: ids, attention_mask_key: mask}`` per non-blank chunk.

    Each list holds exactly ``max_length`` ints: ``[CLS] ... [SEP]`` then ``[PAD]``s, truncated to
    fit. ``token_type_ids`` are dropped, as in the reference.
    """

    name = "tokenizer"

    def __init__(self, tokenizer: Any, max_length: int, input_ids_key: str, attention_mask_key: str) -> None:
        if tokenizer is None:
            raise ValueError("the tokenizer step needs a tokenizer")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.input_ids_key = input_ids_key
        self.attention_mask_key = attention_mask_key

    def __call__(self, value: Any) -> list[dict[str, list[int]]]:
        return self.many([value])[0]

    def many(self, values: list[Any]) -> list[list[dict[str, list[int]]]]:
        """Several values' chunk encodings from one tokenizer call: every chunk is padded to
        ``max_length`` and truncated alone, so a chunk's encoding does not depend on the others."""
        lists = [[chunk for chunk in value if chunk and chunk.strip()] for value in values]
        flat = [chunk for chunks in lists for chunk in chunks]
        if not flat:
            return [[] for _ in lists]
        encoded = self.tokenizer(
            flat,
            add_special_tokens=True,
            max_length=self.max_length,
            truncation=True,
            padding="max_length",
            return_attention_mask=True,
        )
        rows = [
            {self.input_ids_key: list(ids), self.attention_mask_key: list(mask)}
            for ids, mask in zip(encoded["input_ids"], encoded["attention_mask"], strict=True)
        ]
        out: list[list[dict[str, list[int]]]] = []
        start = 0
        for chunks in lists:
            out.append(rows[start:start + len(chunks)])
            start += len(chunks)
        return out
