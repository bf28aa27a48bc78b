"""The median-over-rounds summary of one benchmark cell, shared by the benchmarks."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Protocol

from bench.loadgen import LoadResult


class _Timed(Protocol):
    @property
    def p50_ms(self) -> float: ...

    @property
    def p99_ms(self) -> float: ...


class Sample(Protocol):
    """One round's measurement of a cell: its timings, rate, errors and count."""

    @property
    def result(self) -> _Timed: ...

    @property
    def rate(self) -> float: ...

    @property
    def errors(self) -> int: ...

    @property
    def count(self) -> int: ...


class ResultCounts:
    """``count`` and ``errors`` of a sample whose ``result`` is a FloorResult or a LoadResult."""

    result: Any

    @property
    def count(self) -> int:
        return int(self.result.requests if isinstance(self.result, LoadResult) else self.result.calls)

    @property
    def errors(self) -> int:
        return int(self.result.errors) if isinstance(self.result, LoadResult) else 0


@dataclass
class CellSummary:
    """A cell's samples over the rounds: medians of p50, p99 and rate; sums of errors and counts."""

    spec: Any
    samples: list[Any]  # Sample objects; each benchmark has its own concrete type

    @property
    def p50_ms(self) -> float:
        return float(statistics.median(s.result.p50_ms for s in self.samples))

    @property
    def p99_ms(self) -> float:
        return float(statistics.median(s.result.p99_ms for s in self.samples))

    @property
    def rate(self) -> float:
        return float(statistics.median(s.rate for s in self.samples))

    @property
    def errors(self) -> int:
        return sum(s.errors for s in self.samples)

    @property
    def count(self) -> int:
        return sum(s.count for s in self.samples)


class RoundsSummary:
    """Medians of p50, p99 and req/s and sums of errors and requests over ``rounds``, each a
    measurement whose ``result`` is a LoadResult (the HTTP cells of ``serve`` and ``control``)."""

    rounds: list[Any]

    @staticmethod
    def _median(values: list[float]) -> float:
        return statistics.median(values) if values else 0.0

    @property
    def p50_ms(self) -> float:
        return self._median([m.result.p50_ms for m in self.rounds])

    @property
    def p99_ms(self) -> float:
        return self._median([m.result.p99_ms for m in self.rounds])

    @property
    def rps(self) -> float:
        return self._median([m.result.rps for m in self.rounds])

    @property
    def errors(self) -> int:
        return sum(m.result.errors for m in self.rounds)

    @property
    def requests(self) -> int:
        return sum(m.result.requests for m in self.rounds)

