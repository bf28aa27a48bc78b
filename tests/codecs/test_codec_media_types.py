"""parse_media_type / parse_accept: case, whitespace, parameters, quotes, q-values and wildcards."""

from __future__ import annotations

import pytest

from mainsail.codecs import MediaType, parse_accept, parse_media_type


@pytest.mark.parametrize("value", [None, "", "   "])
def test_blank_media_type_is_none(value: str | None) -> None:
    assert parse_media_type(value) is None


def test_type_is_lowercased_and_stripped() -> None:
    parsed = parse_media_type("  Application/JSON  ")
    assert parsed == MediaType("application/json", {})
    assert parsed is not None and parsed.charset == "utf-8"


def test_parameters_lowercase_keys_keep_values() -> None:
    parsed = parse_media_type("text/csv ; Charset = ISO-8859-1; Header=Present")
    assert parsed is not None
    assert parsed.type == "text/csv"
    assert dict(parsed.params) == {"charset": "ISO-8859-1", "header": "Present"}
    assert parsed.charset == "ISO-8859-1"


def test_quoted_parameter_values_are_unquoted_and_may_hold_separators() -> None:
    parsed = parse_media_type('text/csv; charset="utf-8"; note="a;b,c \\"q\\""')
    assert parsed is not None
    assert parsed.charset == "utf-8"
    assert parsed.params["note"] == 'a;b,c "q"'


def test_parameters_without_value_are_dropped() -> None:
    parsed = parse_media_type("application/json; flag; =x; q=0.5")
    assert parsed is not None
    assert dict(parsed.params) == {"q": "0.5"}


def test_bare_star_reads_as_any() -> None:
    parsed = parse_media_type("*")
    assert parsed is not None and parsed.type == "*/*"


def test_media_type_params_are_read_only() -> None:
    parsed = parse_media_type("text/csv; charset=utf-8")
    assert parsed is not None
    with pytest.raises(TypeError):
        parsed.params["charset"] = "latin-1"  # type: ignore[index]


def test_media_types_are_hashable_and_compare_by_value() -> None:
    first = parse_media_type("text/csv; charset=utf-8; a=b")
    second = parse_media_type("TEXT/CSV;a=b;CHARSET=utf-8")
    assert first == second and hash(first) == hash(second)
    assert first != parse_media_type("text/csv")
    assert {first, second} == {first}


def test_matches_wildcards() -> None:
    assert MediaType("*/*").matches("text/csv")
    assert MediaType("application/*").matches("application/json")
    assert not MediaType("application/*").matches("text/csv")
    assert MediaType("text/csv").matches("text/csv")
    assert not MediaType("text/csv").matches("text/plain")


@pytest.mark.parametrize("value", [None, "", " , ,"])
def test_empty_accept(value: str | None) -> None:
    assert parse_accept(value) == []


def test_accept_orders_by_q_and_is_stable() -> None:
    ranges = parse_accept("text/csv;q=0.5, application/json, application/x-npy;q=0.5, */*;q=0.1, text/plain")
    assert [r.type for r in ranges] == [
        "application/json",
        "text/plain",
        "text/csv",
        "application/x-npy",
        "*/*",
    ]


def test_accept_drops_q_zero_and_tolerates_bad_q() -> None:
    ranges = parse_accept("text/csv;q=0, application/json;q=0.000, application/x-npy;q=oops, */*;q=2")
    assert [r.type for r in ranges] == ["application/x-npy", "*/*"]


def test_accept_keeps_wildcards_and_case() -> None:
    ranges = parse_accept("Application/*;Q=0.9, */*;q=0.8, TEXT/CSV")
    assert [r.type for r in ranges] == ["text/csv", "application/*", "*/*"]
    assert ranges[1].is_wildcard and ranges[2].is_wildcard and not ranges[0].is_wildcard


def test_accept_respects_quoted_commas() -> None:
    ranges = parse_accept('text/csv; note="a,b", application/json')
    assert [r.type for r in ranges] == ["text/csv", "application/json"]
    assert ranges[0].params["note"] == "a,b"
