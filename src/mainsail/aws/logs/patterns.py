"""CloudWatch Logs filter patterns: the unstructured syntax (terms, phrases, ?any, -not) as a matcher."""

from __future__ import annotations

from collections.abc import Callable

from mainsail.aws.logs.errors import InvalidParameterException


def parse_pattern(pattern: str) -> Callable[[str], bool] | None:
    """A matcher for CloudWatch's unstructured filter pattern syntax: terms (all must occur, case
    sensitive), ``"quoted phrases"``, ``?term ?term`` (at least one), ``-term`` (must not occur).
    ``None`` for an empty pattern. JSON (``{...}``), space-delimited (``[...]``) and regex
    (``%...%``) patterns are refused with InvalidParameterException."""
    text = pattern.strip()
    if not text:
        return None
    if text[0] in "{[%":
        raise InvalidParameterException(
            f"Invalid filter pattern: {pattern!r} (mainsail supports terms, \"quoted phrases\", ?any and -not)")
    required: list[str] = []
    anyof: list[str] = []
    excluded: list[str] = []
    i, n = 0, len(text)
    while i < n:
        if text[i].isspace():
            i += 1
            continue
        prefix = ""
        if text[i] in "?-" and i + 1 < n and not text[i + 1].isspace():
            prefix, i = text[i], i + 1
        if text[i] == '"':
            j, term = i + 1, []
            while j < n and text[j] != '"':
                if text[j] == "\\" and j + 1 < n:
                    j += 1
                term.append(text[j])
                j += 1
            if j >= n:
                raise InvalidParameterException(f"Invalid filter pattern: unbalanced quote in {pattern!r}")
            word, i = "".join(term), j + 1
            if i < n and not text[i].isspace():
                raise InvalidParameterException(f"Invalid filter pattern: {pattern!r}")
        else:
            j = i
            while j < n and not text[j].isspace():
                if text[j] in '"{}[]':
                    raise InvalidParameterException(f"Invalid character(s) in term in filter pattern {pattern!r}")
                j += 1
            word, i = text[i:j], j
        if not word:
            continue
        {"": required, "?": anyof, "-": excluded}[prefix].append(word)

    def match(message: str) -> bool:
        return (all(t in message for t in required) and not any(t in message for t in excluded)
                and (not anyof or any(t in message for t in anyof)))

    return match
