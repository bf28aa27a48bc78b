"""Text steps and pipelines: the reference (cursus bsm_pytorch) preprocessing, quirks included."""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from transformers import BertTokenizerFast  # type: ignore[attr-defined]

from mainsail.errors import ModelLoadError
from mainsail.features.text import (
    DEFAULT_STEPS,
    DEFAULT_TOKENIZER,
    StepRegistry,
    TextPipeline,
    TextSettings,
    default_registry,
    pipelines_from_hyperparameters,
    resolve_tokenizer,
)
from mainsail.features.text_steps import (
    CsAdapter,
    CsChatSplitter,
    DialogueChunker,
    DialogueSplitter,
    EmojiRemover,
    HtmlNormalizer,
    TextNormalizer,
    TextUpper,
    Tokenize,
)
from tests.conftest import CURSUS_FIXTURE

FIXTURE = CURSUS_FIXTURE
MODEL_DIR = FIXTURE / "model"
TINYBERT = MODEL_DIR / "tinybert"
# The real tokenizer comes from the reference fixture (tests/fixtures/cursus_trimodal).
CLS, SEP, PAD = 2, 3, 0  # tinybert's special ids

FULL = ["dialogue_splitter", "html_normalizer", "emoji_remover", "text_normalizer", "dialogue_chunker", "tokenizer"]
MESSAGE_18 = "tracking shows delivered but nothing here and i want a refund for the damaged item please"  # 18 tokens


@pytest.fixture(scope="module")
def tok() -> Any:
    return resolve_tokenizer("tinybert", MODEL_DIR)


@pytest.fixture(scope="module")
def hp() -> dict[str, Any]:
    return dict(json.loads((MODEL_DIR / "hyperparameters.json").read_text()))


def ids(tok: Any, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"])


def vocab_tokenizer(tmp_path: Path, words: list[str]) -> Any:
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n", encoding="utf-8")
    return BertTokenizerFast(vocab=str(vocab))  # transformers 5 ignores vocab_file=


# ------------------------------------------------------------------------------------------- steps


def test_splitter_finds_stripped_non_empty_messages() -> None:
    split = DialogueSplitter()
    assert split("[bom] Hi <b>x</b> [eom][bom]  [eom]") == ["Hi <b>x</b>"]
    assert split("junk [bom] a\n b [eom] between [bom]c[eom] tail [eom]") == ["a\n b", "c"]  # DOTALL, non-greedy
    assert split("[bom] a [bom] b [eom]") == ["a [bom] b"]
    assert split("no markers here") == []
    assert split("[BOM] upper-case markers [EOM]") == []
    assert split("") == []


def test_html_normalizer_decodes_entities_and_joins_text_nodes() -> None:
    html = HtmlNormalizer()
    assert html("<div><p>Hello <b>big   <i>world</i></b></p>  &amp; &lt;tag&gt; &#x41;&eacute;</div>") == (
        "Hello big world & <tag> Aé"
    )
    assert html(["<p>order is late </b>", "i can help <br> can you", "   ", ""]) == [
        "order is late",
        "i can help can you",
        "",
        "",
    ]
    # Inputs bs4 would warn about (URL, file name) parse silently: warnings are errors here.
    assert html(["http://example.com/track", "notes.txt", "a\nb"]) == ["http://example.com/track", "notes.txt", "a\nb"]


def test_emoji_remover_deletes_the_reference_ranges_cjk_and_hangul_included() -> None:
    remove = EmojiRemover()
    assert remove("late 😠 ✈ ok 👍🇺🇸") == "late   ok "
    assert remove("中文 한국어 ひらがな カタカナ ＡＢ ✓★ⓜ") == " " * 5  # U+24C2..U+1F251 deletes all of it
    assert remove("Ⓛ привет مرحبا नमस्ते γειά €™→ 🤔") == "Ⓛ привет مرحبا नमस्ते γειά €™→ 🤔"  # outside the ranges
    assert remove(["a😀b", "中"]) == ["ab", ""]


def test_text_normalizer_and_upper() -> None:
    norm = TextNormalizer()
    assert norm("  Hello \t\n  WORLD\u00a0 x  ") == "hello world x"
    assert norm(["  A  B ", "", "ÀÉ İ"]) == ["a b", "", "àé i̇"]
    upper = TextUpper()
    assert upper("  a \n b ß ") == "A B SS"
    with pytest.raises(TypeError, match="one string"):
        upper(["a"])


def test_cs_chat_splitter_and_adapter() -> None:
    text = "preamble [customer]: where is my order? [agent]:  checking [bot]:[customer]: thanks"
    messages = CsChatSplitter()(text)
    assert messages == [
        {"role": "customer", "content": "where is my order?"},
        {"role": "agent", "content": "checking"},
        {"role": "customer", "content": "thanks"},
    ]
    assert CsAdapter()(messages) == ["[customer]: where is my order?", "[agent]: checking", "[customer]: thanks"]
    assert CsChatSplitter()("no roles") == []


def test_chunker_packs_greedily_and_joins_with_spaces(tok: Any) -> None:
    chunker = DialogueChunker(tok, max_tokens=8, truncate=False, max_total_chunks=5)
    messages = ["hi", "order is late", "i can help with that", "thanks"]  # 1, 3, 5, 1 tokens
    assert chunker(messages) == ["hi order is late", "i can help with that thanks"]
    assert chunker([]) == ["."]
    assert chunker(["", "  "]) == ["."]


def test_chunker_truncates_to_max_total_chunks(tok: Any) -> None:
    messages = [MESSAGE_18] * 10  # each message fills a chunk of 32 on its own
    capped = DialogueChunker(tok, max_tokens=32, truncate=True, max_total_chunks=3)(messages)
    assert capped == [MESSAGE_18] * 3
    unbounded = DialogueChunker(tok, max_tokens=32, truncate=False, max_total_chunks=3)(messages)
    assert unbounded == [MESSAGE_18] * 10
    # With room for the open chunk it is kept: 2 closed + 1 open < 4
    assert DialogueChunker(tok, max_tokens=32, truncate=True, max_total_chunks=4)(messages[:3]) == [MESSAGE_18] * 3


def test_chunker_cuts_and_decodes_an_overlong_message(tok: Any) -> None:
    long = " ".join(["refund"] * 40) + " zzz"
    chunks = DialogueChunker(tok, max_tokens=32, truncate=True, max_total_chunks=3)([long, "ok"])
    assert chunks == [" ".join(["refund"] * 32), "ok"]
    # Decoding skips special tokens: a cut run of [UNK]s (unknown script) decodes to nothing.
    assert DialogueChunker(tok, max_tokens=3, truncate=False, max_total_chunks=5)(["привет мир и всё", "ok"]) == [
        "",
        "ok",
    ]


def test_chunker_on_non_latin_vocabulary(tmp_path: Path) -> None:
    tokenizer = vocab_tokenizer(tmp_path, ["привет", "мир", "и", "всё", "مرحبا", "."])
    chunker = DialogueChunker(tokenizer, max_tokens=2, truncate=False, max_total_chunks=5)
    assert chunker(["Привет мир и всё", "مرحبا"]) == ["привет мир", "مرحبا"]
    encoded = Tokenize(tokenizer, 4, "input_ids", "attention_mask")(["привет мир и"])
    vocab = tokenizer.get_vocab()
    assert encoded == [{"input_ids": [2, vocab["привет"], vocab["мир"], 3], "attention_mask": [1, 1, 1, 1]}]


def test_tokenize_pads_to_max_len_and_loses_two_tokens_of_a_full_chunk(tok: Any) -> None:
    step = Tokenize(tok, 32, "input_ids", "attention_mask")
    out = step(["hi", "", "   ", MESSAGE_18 + " " + "refund " * 14])
    assert len(out) == 2  # blank chunks skipped
    first, full = out
    assert set(first) == {"input_ids", "attention_mask"}  # no token_type_ids
    assert first["input_ids"] == [CLS, *ids(tok, "hi"), SEP] + [PAD] * 29
    assert first["attention_mask"] == [1, 1, 1] + [0] * 29
    packed = ids(tok, MESSAGE_18 + " " + "refund " * 14)
    assert len(packed) == 32
    assert full["input_ids"] == [CLS, *packed[:30], SEP]
    assert full["attention_mask"] == [1] * 32
    assert step([]) == []


def test_tokenize_batch_equals_one_call_per_chunk(tok: Any) -> None:
    chunks = ["hi there", MESSAGE_18 * 3, "ok", "привет"]
    batched = Tokenize(tok, 16, "a", "m")(chunks)
    for chunk, got in zip(chunks, batched):
        single = tok(chunk, add_special_tokens=True, max_length=16, truncation=True, padding="max_length")
        assert got == {"a": single["input_ids"], "m": single["attention_mask"]}


# --------------------------------------------------------------------------------------- pipelines


def test_pipeline_turns_none_and_nan_into_dot_chunk(tok: Any) -> None:
    pipe = default_registry().build(FULL, TextSettings(8, True, 3), tok)
    dot = [{"input_ids": [CLS, *ids(tok, "."), SEP] + [PAD] * 5, "attention_mask": [1, 1, 1] + [0] * 5}]
    for value in (None, math.nan, "", "no markers here", "[bom] 中文 😀 [eom]", "[bom] <p> </p> [eom]"):
        assert pipe(value) == dot, value
    assert pipe(123) == dot  # str(123) has no markers
    assert pipe.names == tuple(FULL)


def test_pipeline_end_to_end_on_tricky_dialogue(tok: Any) -> None:
    pipe = default_registry().build(FULL, TextSettings(16, True, 2), tok)
    text = (
        "[bom] <p>HELLO &amp;   there</p> 😀 [eom] [bom] 中文 [eom] [bom]\n my  Package <b>never</b> arrived!! ✈ [eom]"
    )
    out = pipe(text)
    expected = ids(tok, "hello & there my package never arrived!!")
    assert out == [
        {
            "input_ids": [CLS, *expected, SEP] + [PAD] * (14 - len(expected)),
            "attention_mask": [1] * (len(expected) + 2) + [0] * (14 - len(expected)),
        }
    ]


def test_pipeline_must_end_in_encodings(tok: Any) -> None:
    pipe = default_registry().build(["dialogue_splitter"], TextSettings(8, True, 3), tok)
    with pytest.raises(TypeError, match="tokenizer"):
        pipe("[bom] a [eom]")


def test_pipelines_from_trimodal_fixture(tok: Any, hp: dict[str, Any]) -> None:
    pipes = pipelines_from_hyperparameters(hp, tok)
    assert list(pipes) == ["dialogue", "shiptrack"]
    assert pipes["dialogue"].names == tuple(hp["primary_text_processing_steps"])
    assert pipes["shiptrack"].names == tuple(hp["secondary_text_processing_steps"])
    out = pipes["shiptrack"]("[bom] DELIVERED [eom] [bom] picked   up [eom]")
    assert out[0]["input_ids"][:6] == [CLS, *ids(tok, "delivered picked up"), SEP, PAD]


def test_pipelines_from_bimodal_hyperparameters(tok: Any) -> None:
    hp = {"text_name": "chat", "text_processing_steps": ["dialogue_splitter", "text_upper", "tokenizer"]}
    with pytest.raises(TypeError, match="one string"):  # the reference fails too (list has no .strip)
        pipelines_from_hyperparameters(hp, tok)["chat"]("x")
    hp = {"text_name": "chat", "text_processing_steps": ["text_upper", "dialogue_splitter", "tokenizer"]}
    hp |= {"max_sen_len": "8", "chunk_trancate": "true", "max_total_chunks": "2"}
    pipes = pipelines_from_hyperparameters(hp, tok)
    assert list(pipes) == ["chat"]
    assert pipes["chat"]("[bom] hi [eom]") == []  # upper-cased markers no longer split, no chunker -> no "."
    assert pipelines_from_hyperparameters({"text_name": None}, tok) == {}
    assert pipelines_from_hyperparameters({}, tok) == {}


def test_missing_step_lists_take_defaults_with_a_warning(tok: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="mainsail.features.text")
    pipes = pipelines_from_hyperparameters({"text_name": "chat", "text_processing_steps": None}, tok)
    assert pipes["chat"].names == DEFAULT_STEPS["bimodal"]
    assert "html_normalizer" not in DEFAULT_STEPS["bimodal"]
    assert "text_processing_steps" in caplog.text and "'chat'" in caplog.text
    caplog.clear()
    pipes = pipelines_from_hyperparameters({"primary_text_name": "a", "secondary_text_name": "b"}, tok)
    assert pipes["a"].names == DEFAULT_STEPS["primary"] == DEFAULT_STEPS["bimodal"]
    assert pipes["b"].names == DEFAULT_STEPS["secondary"]
    assert caplog.text.count("default steps") == 2
    caplog.clear()
    pipelines_from_hyperparameters({"text_name": "chat", "text_processing_steps": FULL}, tok)
    assert caplog.text == ""


def test_trimodal_needs_two_distinct_fields(tok: Any) -> None:
    with pytest.raises(ValueError, match="secondary_text_name"):
        pipelines_from_hyperparameters({"primary_text_name": "a"}, tok)
    with pytest.raises(ValueError, match="both 'a'"):
        pipelines_from_hyperparameters({"primary_text_name": "a", "secondary_text_name": "a"}, tok)


def test_settings_from_hyperparameters_defaults_and_validation() -> None:
    assert TextSettings.from_hyperparameters({}) == TextSettings(512, False, 5, "input_ids", "attention_mask")
    settings = TextSettings.from_hyperparameters(
        {"max_sen_len": 32.0, "chunk_trancate": "True", "max_total_chunks": "3", "text_input_ids_key": "ids"}
    )
    assert settings == TextSettings(32, True, 3, "ids", "attention_mask")
    with pytest.raises(ValueError, match="max_sen_len"):
        TextSettings.from_hyperparameters({"max_sen_len": "lots"})
    with pytest.raises(ValueError, match="chunk_trancate"):
        TextSettings.from_hyperparameters({"chunk_trancate": "maybe"})
    with pytest.raises(ValueError, match="at least 2"):
        TextSettings(1, True, 3)
    with pytest.raises(ValueError, match="max_total_chunks"):
        TextSettings(8, True, 0)
    with pytest.raises(ValueError, match="different"):
        TextSettings(8, True, 3, "x", "x")


# ---------------------------------------------------------------------------------------- registry


class Shout:
    name = "shout"

    def __init__(self, suffix: str) -> None:
        self.suffix = suffix

    def __call__(self, value: Any) -> Any:
        return [message + self.suffix for message in value]


def test_user_registered_step_runs_in_a_pipeline(tok: Any) -> None:
    registry = default_registry()
    registry.register("shout", lambda settings, tokenizer: Shout(" help"))
    hp = {"text_name": "t", "text_processing_steps": ["dialogue_splitter", "shout", "dialogue_chunker", "tokenizer"]}
    out = pipelines_from_hyperparameters(hp | {"max_sen_len": 8}, tok, registry)["t"]("[bom] hi [eom]")
    assert out[0]["input_ids"][:5] == [CLS, *ids(tok, "hi help"), SEP, PAD]
    assert "shout" in registry.names() and "shout" not in default_registry().names()
    with pytest.raises(ValueError, match="already registered"):
        registry.register("shout", lambda settings, tokenizer: Shout("!"))
    registry.register("shout", lambda settings, tokenizer: Shout("!"), replace=True)
    assert registry.build(["shout"], TextSettings(8, True, 3), tok).steps[0]("a") == ["a!"]


def test_registry_errors(tok: Any) -> None:
    registry = default_registry()
    settings = TextSettings(8, True, 3)
    assert registry.names() == [
        "dialogue_splitter",
        "html_normalizer",
        "emoji_remover",
        "text_normalizer",
        "text_upper",
        "cs_chat_splitter",
        "cs_adapter",
        "dialogue_chunker",
        "tokenizer",
    ]
    with pytest.raises(ValueError, match="unknown text step 'lemmatize'.*dialogue_splitter.*tokenizer"):
        registry.build(["dialogue_splitter", "lemmatize"], settings, tok)
    for name in ("fasttext_embedding", "sequence_ordering", "time_delta"):
        with pytest.raises(ValueError, match="step list"):
            registry.build([name], settings, tok)
    with pytest.raises(ValueError, match="empty"):
        registry.build([], settings, tok)
    with pytest.raises(TypeError, match="list of step names"):
        registry.build("tokenizer", settings, tok)
    with pytest.raises(ValueError, match="needs a tokenizer"):
        registry.build(["dialogue_chunker"], settings, None)
    registry.register("bad", lambda settings, tokenizer: "not a step")  # type: ignore[arg-type,return-value,unused-ignore]
    with pytest.raises(TypeError, match="named callable"):
        registry.build(["bad"], settings, tok)
    with pytest.raises(ValueError, match="at least one step"):
        TextPipeline(())
    assert isinstance(StepRegistry().names(), list)


# ------------------------------------------------------------------------------------ tokenizer lookup


def test_resolve_tokenizer_prefers_the_model_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model_dir = tmp_path / "model"
    shutil.copytree(TINYBERT, model_dir / "tok")
    other = tmp_path / "cwd" / "tok"
    other.mkdir(parents=True)
    (other / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nonly\n")
    BertTokenizerFast(vocab=str(other / "vocab.txt")).save_pretrained(other)
    monkeypatch.chdir(tmp_path / "cwd")
    assert len(resolve_tokenizer("tok", model_dir)) == 171  # the model's own, not ./tok
    assert len(resolve_tokenizer("tok", tmp_path / "elsewhere")) == 6  # then a local path
    assert len(resolve_tokenizer(str(TINYBERT), tmp_path)) == 171


def test_resolve_tokenizer_offline_error_names_what_was_tried(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as info:
        resolve_tokenizer("mainsail-tests/not-a-cached-model", tmp_path)
    message = str(info.value)
    assert "model directory" in message and str(tmp_path / "mainsail-tests/not-a-cached-model") in message
    assert "local path" in message and "Hugging Face cache" in message
    with pytest.raises(ModelLoadError, match=DEFAULT_TOKENIZER):
        resolve_tokenizer("", tmp_path)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "tokenizer.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="cannot load tokenizer 'broken'"):
        resolve_tokenizer("broken", tmp_path)


# ------------------------------------------------------------------------ parity on fixture requests


def _fixture_records() -> list[dict[str, Any]]:
    records = []
    for path in sorted((FIXTURE / "requests").glob("*.json")):
        records += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return records


def test_fixture_requests_meet_the_reference_invariants(tok: Any, hp: dict[str, Any]) -> None:
    pipes = pipelines_from_hyperparameters(hp, tok)
    max_len, max_chunks = hp["max_sen_len"], hp["max_total_chunks"]
    records = _fixture_records()
    assert len(records) >= 10
    for record in records:
        for field in ("dialogue", "shiptrack"):
            chunks = pipes[field](record.get(field))
            assert 1 <= len(chunks) <= max_chunks
            for chunk in chunks:
                assert set(chunk) == {"input_ids", "attention_mask"}
                assert len(chunk["input_ids"]) == len(chunk["attention_mask"]) == max_len
                assert chunk["input_ids"][0] == CLS
                used = sum(chunk["attention_mask"])
                assert chunk["attention_mask"] == [1] * used + [0] * (max_len - used)
                assert chunk["input_ids"][used - 1] == SEP and chunk["input_ids"][used:] == [PAD] * (max_len - used)


def test_fixture_known_cases(tok: Any, hp: dict[str, Any]) -> None:
    pipes = pipelines_from_hyperparameters(hp, tok)
    by_id = {record["order_id"]: record for record in _fixture_records()}
    no_markers = pipes["dialogue"](by_id["ord0347"]["dialogue"])
    assert [chunk["input_ids"][:3] for chunk in no_markers] == [[CLS, *ids(tok, "."), SEP]]
    long = pipes["dialogue"](by_id["ord0346"]["dialogue"])  # six 18-token messages, 32 per chunk, cap 3
    assert [chunk["input_ids"][: 18 + 2] for chunk in long] == [[CLS, *ids(tok, MESSAGE_18), SEP]] * 3
    html = pipes["dialogue"](by_id["ord0345"]["dialogue"])
    expected = ids(tok, "hello there my package never arrived!!")
    assert html[0]["input_ids"][: len(expected) + 2] == [CLS, *expected, SEP]


# ---------------------------------------------------------------------------------------- properties


@given(st.text(max_size=200))
def test_normalizer_is_idempotent_and_emoji_ranges_are_gone(text: str) -> None:
    norm, remove = TextNormalizer(), EmojiRemover()
    once = norm(text)
    assert norm(once) == once
    assert not any(0x24C2 <= ord(char) <= 0x1F251 or 0x1F300 <= ord(char) <= 0x1F6FF for char in remove(text))


@given(st.lists(st.text(alphabet="ab mo\n\t\u00a0", max_size=12), max_size=8))
def test_splitter_returns_stripped_non_empty_messages(parts: list[str]) -> None:
    text = " x ".join(f"[bom]{part}[eom]" for part in parts)
    assert DialogueSplitter()(text) == [part.strip() for part in parts if part.strip()]


@given(st.text(max_size=60))
def test_html_normalizer_shortcut_for_plain_text_matches_beautifulsoup(text: str) -> None:
    import io

    from bs4 import BeautifulSoup

    plain = text.replace("<", "").replace("&", "")  # the markup-free texts the shortcut takes
    soup = BeautifulSoup(io.StringIO(plain), "html.parser").get_text(separator=" ", strip=True)
    assert HtmlNormalizer()(plain) == soup


def test_pipeline_many_equals_one_text_at_a_time(tok: Any) -> None:
    texts = [
        None, math.nan, "", "no markers", "[bom] <p>HELLO &amp; there</p> 😀 [eom] [bom] 中文 [eom]",
        " ".join(f"[bom] {MESSAGE_18} {i} [eom]" for i in range(9)),  # beyond the chunk limit
        "[bom] a [eom] [bom]   [eom]", 42,
    ]
    for truncate in (True, False):
        pipe = default_registry().build(FULL, TextSettings(16, truncate, 3), tok)
        assert pipe.many(texts) == [pipe(text) for text in texts]
    assert pipe.many([]) == []
