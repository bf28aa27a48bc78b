"""Metric math: a small parser (no ``eval``) for GetMetricData's and alarms' expressions.

Supported: numbers, query ids, ``+ - * /``, unary minus, parentheses, arrays ``[m1, m2]``, ``METRICS()``
(every metric query of the request; ``METRICS("text")`` those whose id or label contains ``text``), and
``SUM AVG MIN MAX``. As CloudWatch: arithmetic applies per timestamp (a timestamp missing on one side is
missing in the result); a function of an array is a time series (per timestamp over the series that have a
value there), a function of one time series is a scalar (over its values).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

Series = dict[float, float]


@dataclass
class Array:
    """Several time series, each with its (id, label)."""

    items: list[tuple[str, str, Series]]


Value = float | Series | Array


class ExpressionError(ValueError):
    """An expression that does not parse or cannot be evaluated; the message says where."""


_TOKEN_RE = re.compile(r"\s*(?:(?P<number>\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)"
                       r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<string>\"[^\"]*\")|(?P<op>[-+*/(),\[\]]))")

Node = tuple[object, ...]


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        match = _TOKEN_RE.match(text, pos)
        if match is None or match.end() == pos:
            raise ExpressionError(f"Syntax Error: unexpected character at position {pos + 1}.")
        kind = match.lastgroup or ""
        out.append((kind, match.group(kind)))
        pos = match.end()
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        self.pos = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, op: str | None = None) -> tuple[str, str]:
        token = self.peek()
        if token is None or (op is not None and token != ("op", op)):
            raise ExpressionError(f"Syntax Error: expected {op or 'a value'} at token {self.pos + 1}.")
        self.pos += 1
        return token

    def parse(self) -> Node:
        node = self.expression()
        if self.peek() is not None:
            raise ExpressionError(f"Syntax Error: unexpected {self.peek()[1]!r}.")  # type: ignore[index]
        return node

    def expression(self) -> Node:
        node = self.term()
        while self.peek() in (("op", "+"), ("op", "-")):
            node = ("bin", self.take()[1], node, self.term())
        return node

    def term(self) -> Node:
        node = self.unary()
        while self.peek() in (("op", "*"), ("op", "/")):
            node = ("bin", self.take()[1], node, self.unary())
        return node

    def unary(self) -> Node:
        if self.peek() == ("op", "-"):
            self.take()
            return ("bin", "*", ("num", -1.0), self.unary())
        return self.primary()

    def primary(self) -> Node:
        kind, text = self.take()
        if kind == "number":
            return ("num", float(text))
        if kind == "string":
            return ("str", text[1:-1])
        if (kind, text) == ("op", "("):
            node = self.expression()
            self.take(")")
            return node
        if (kind, text) == ("op", "["):
            items = [self.expression()]
            while self.peek() == ("op", ","):
                self.take()
                items.append(self.expression())
            self.take("]")
            return ("array", *items)
        if kind == "name" and self.peek() == ("op", "("):
            self.take()
            args: list[Node] = []
            if self.peek() != ("op", ")"):
                args.append(self.expression())
                while self.peek() == ("op", ","):
                    self.take()
                    args.append(self.expression())
            self.take(")")
            return ("call", text.upper(), *args)
        if kind == "name":
            return ("id", text)
        raise ExpressionError(f"Syntax Error: unexpected {text!r}.")


def parse(text: str) -> Node:
    """The syntax tree of ``text``; :class:`ExpressionError` if it does not parse."""
    return _Parser(text).parse()


def references(node: Node) -> set[str]:
    """The query ids ``node`` reads (``METRICS()`` reads every one: the empty id stands for it)."""
    if node[0] == "id":
        return {str(node[1])}
    if node[0] == "call" and node[1] == "METRICS":
        return {""}
    out: set[str] = set()
    for child in node[1:]:
        if isinstance(child, tuple):
            out |= references(child)
    return out


_AGGREGATES: dict[str, Callable[[list[float]], float]] = {
    "SUM": math.fsum, "AVG": lambda v: math.fsum(v) / len(v), "MIN": min, "MAX": max}


def evaluate(node: Node, lookup: Callable[[str], Value], metrics: Callable[[str], Array]) -> Value:
    """The value of ``node``; ``lookup`` gives a query id's value, ``metrics`` the ``METRICS(filter)`` array."""
    kind = node[0]
    if kind == "num":
        return float(node[1])  # type: ignore[arg-type]
    if kind == "id":
        return lookup(str(node[1]))
    if kind == "array":
        items: list[tuple[str, str, Series]] = []
        for child in node[1:]:
            value = evaluate(child, lookup, metrics)  # type: ignore[arg-type]
            if isinstance(value, Array):
                items.extend(value.items)
            elif isinstance(value, dict):
                items.append(("", "", value))
            else:
                raise ExpressionError("Error: an array holds time series, not scalars.")
        return Array(items)
    if kind == "bin":
        left = evaluate(node[2], lookup, metrics)  # type: ignore[arg-type]
        right = evaluate(node[3], lookup, metrics)  # type: ignore[arg-type]
        return _binary(str(node[1]), left, right)
    if kind == "call":
        return _call(str(node[1]), list(node[2:]), lookup, metrics)  # type: ignore[arg-type]
    raise ExpressionError("Syntax Error: a string stands only as METRICS()' argument.")


def _call(name: str, args: list[Node], lookup: Callable[[str], Value], metrics: Callable[[str], Array]) -> Value:
    if name == "METRICS":
        if len(args) > 1 or (args and args[0][0] != "str"):
            raise ExpressionError("Error: METRICS() takes no argument or one string.")
        return metrics(str(args[0][1]) if args else "")
    aggregate = _AGGREGATES.get(name)
    if aggregate is None:
        raise ExpressionError(f"Error: unknown function {name}.")
    if len(args) != 1:
        raise ExpressionError(f"Error: {name}() takes one argument.")
    value = evaluate(args[0], lookup, metrics)
    if isinstance(value, Array):
        by_time: dict[float, list[float]] = {}
        for _, _, one in value.items:
            for ts, v in one.items():
                by_time.setdefault(ts, []).append(v)
        return {ts: aggregate(values) for ts, values in sorted(by_time.items())}
    if isinstance(value, dict):
        return aggregate(list(value.values())) if value else math.nan
    return value


def _apply(op: str, a: float, b: float) -> float:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if b == 0:
        return math.nan
    return a / b


def _binary(op: str, left: Value, right: Value) -> Value:
    if isinstance(left, Array):
        return Array([(i, label, _series(_binary(op, s, right))) for i, label, s in left.items])
    if isinstance(right, Array):
        return Array([(i, label, _series(_binary(op, left, s))) for i, label, s in right.items])
    if isinstance(left, dict) and isinstance(right, dict):
        return {ts: _apply(op, v, right[ts]) for ts, v in left.items() if ts in right}
    if isinstance(left, dict):
        return {ts: _apply(op, v, float(right)) for ts, v in left.items()}  # type: ignore[arg-type]
    if isinstance(right, dict):
        return {ts: _apply(op, float(left), v) for ts, v in right.items()}
    return _apply(op, float(left), float(right))


def _series(value: Value) -> Series:
    assert isinstance(value, dict)  # an array's item with a scalar or series is a series
    return value
