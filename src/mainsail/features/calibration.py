"""Score calibration: lookup tables read from ``<model_dir>/calibration/`` and applied to probabilities.

Every calibration artifact the reference training steps write is a lookup table: a list of
``(raw, calibrated)`` pairs (``calibration_model.pkl`` and ``calibration_models/*.pkl`` hold
``numpy.float64`` pairs sampled at ``np.linspace(0, 1, 1000)``; ``percentile_score.pkl`` holds
plain floats, and with scikit-learn >= 1.3 some of its raw values are NaN). ``LookupTable``
evaluates a table with exactly the reference handler's scalar rule, vectorized over a batch:

* ``r <= x[0]`` -> ``y[0]``; otherwise ``r >= x[-1]`` -> ``y[-1]``;
* otherwise the FIRST segment ``i`` (scanning from the start) with ``x[i] <= r <= x[i+1]`` gives
  ``y[i] + (y[i+1] - y[i]) * (r - x[i]) / (x[i+1] - x[i])``, or ``y[i]`` when ``x[i] == x[i+1]``;
* no segment matched (NaN ``r``, NaN or unsorted ``x``) -> ``y[-1]``.

Arithmetic is float64 (the reference promotes a float32 score against ``numpy.float64`` table
entries, and against plain floats under numpy 1.x). Legacy pickled scikit-learn/pygam calibrator
objects are not supported: the restricted unpickler refuses them, since loading a model must never
run code hidden in a data file.
"""

from __future__ import annotations

import bisect
import logging
import re
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from mainsail.errors import MainsailError, ModelLoadError
from mainsail.features.artifacts import load_data_pickle

logger = logging.getLogger(__name__)

CALIBRATION_DIR = "calibration"
PERCENTILE_FILE = "percentile_score.pkl"
BINARY_FILE = "calibration_model.pkl"
MULTICLASS_DIR = "calibration_models"
_CLASS_FILE = re.compile(r"calibration_model_class_(0|[1-9][0-9]*)\.pkl")
_ONLY_TABLES = "only lookup tables (lists of (raw, calibrated) pairs) are supported"

CalibrationKind = Literal["percentile", "binary", "multiclass"]
FloatArray = npt.NDArray[np.float64]


def _as_number(value: object, index: int, side: str) -> float:
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError(f"point {index}: the {side} value {value!r} is not a number")
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"point {index}: the {side} value {value!r} is too large for a float") from None


@dataclass(frozen=True, eq=False)
class LookupTable:
    """A calibration lookup table of ``(raw, calibrated)`` points, evaluated with the reference semantics.

    ``x`` and ``y`` are read-only float64 arrays of equal length >= 1 (one point is a constant
    table). NaN entries are kept: they never match a segment, exactly as in the reference. Two
    tables are equal when their points are (NaN equal to NaN).
    """

    x: FloatArray
    y: FloatArray
    # Segments that can match some score (both ends non-NaN, x[i] <= x[i+1]), by start index.
    _seg: npt.NDArray[np.intp] = field(init=False, repr=False)
    # True when those segments' lower and upper ends are both non-decreasing: binary search finds
    # the first matching segment. Otherwise (unsorted tables) a per-segment scan does.
    _sorted: bool = field(init=False, repr=False)
    # Plain-float copies for the one-value path (Python floats do the same IEEE arithmetic).
    _lists: tuple[list[float], list[float], list[float], list[int]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        x = np.array(self.x, dtype=np.float64).reshape(-1)
        y = np.array(self.y, dtype=np.float64).reshape(-1)
        if x.shape != y.shape:
            raise ValueError(f"x and y must have the same length, got {x.size} and {y.size}")
        if x.size == 0:
            raise ValueError("a lookup table needs at least one (raw, calibrated) point")
        x.flags.writeable = False
        y.flags.writeable = False
        lo, hi = x[:-1], x[1:]
        with np.errstate(invalid="ignore"):
            seg = np.flatnonzero(lo <= hi)  # False whenever either end is NaN
        starts, ends = x[seg], x[seg + 1]
        sorted_ = bool(np.all(starts[1:] >= starts[:-1]) and np.all(ends[1:] >= ends[:-1]))
        object.__setattr__(self, "x", x)
        object.__setattr__(self, "y", y)
        object.__setattr__(self, "_seg", seg)
        object.__setattr__(self, "_sorted", sorted_)
        object.__setattr__(self, "_lists", (x.tolist(), y.tolist(), ends.tolist(), seg.tolist()))

    @classmethod
    def from_points(cls, points: Sequence[tuple[float, float]]) -> LookupTable:
        """Build a table from a list (or tuple) of ``(raw, calibrated)`` pairs, as the artifacts hold them.

        Each pair is a 2-item tuple or list of real numbers (Python or numpy; NaN allowed, bools
        not). Raises ``ValueError`` naming the first problem: not a list, empty, a point that is
        not a pair, or a value that is not a number.
        """
        if not isinstance(points, list | tuple):
            raise ValueError(f"expected a list of (raw, calibrated) pairs, got {type(points).__name__}")
        if not points:
            raise ValueError("a lookup table needs at least one (raw, calibrated) point")
        xs: list[float] = []
        ys: list[float] = []
        for i, point in enumerate(points):
            if not isinstance(point, tuple | list) or len(point) != 2:
                raise ValueError(f"point {i} is not a (raw, calibrated) pair: {point!r}")
            xs.append(_as_number(point[0], i, "raw"))
            ys.append(_as_number(point[1], i, "calibrated"))
        return cls(np.array(xs, dtype=np.float64), np.array(ys, dtype=np.float64))

    def value(self, raw: float) -> float:
        """One value, with plain floats: the same result as ``__call__`` (the single-record path)."""
        xs, ys, ends, seg = self._lists
        if raw <= xs[0]:
            return ys[0]
        if raw >= xs[-1] or raw != raw:
            return ys[-1]
        if not self._sorted:
            return float(self(np.array([raw]))[0])
        k = bisect.bisect_left(ends, raw)  # first segment whose upper end reaches raw
        if k >= len(seg):
            return ys[-1]
        i = seg[k]
        x1, x2, y1, y2 = xs[i], xs[i + 1], ys[i], ys[i + 1]
        if x1 > raw:
            return ys[-1]
        if x2 == x1:
            return y1
        return y1 + (y2 - y1) * (raw - x1) / (x2 - x1)

    def __call__(self, values: npt.ArrayLike) -> FloatArray:
        """Calibrate every value (any shape) in one vectorized pass; returns float64 of the same shape."""
        r = np.asarray(values, dtype=np.float64)
        flat = r.reshape(-1)
        x, y = self.x, self.y
        out = np.full(flat.shape, y[-1], dtype=np.float64)
        with np.errstate(invalid="ignore"):
            below = flat <= x[0]
            above = ~below & (flat >= x[-1])
            out[below] = y[0]
            out[above] = y[-1]
            inner = np.flatnonzero(~below & ~above & ~np.isnan(flat))
        if inner.size and self._seg.size:
            rows, seg = self._first_segment(flat[inner])
            out[inner[rows]] = self._interpolate(flat[inner[rows]], seg)
        return out.reshape(r.shape)

    def _first_segment(self, r: FloatArray) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
        """For non-NaN scores ``r``: (positions in ``r`` that match a segment, the first such segment)."""
        seg = self._seg
        lo, hi = self.x[seg], self.x[seg + 1]
        if self._sorted:
            k = np.searchsorted(hi, r, side="left")  # first segment whose upper end reaches r
            kk = np.minimum(k, seg.size - 1)
            hit = (k < seg.size) & (lo[kk] <= r)
            return np.flatnonzero(hit), seg[kk[hit]]
        first = np.full(r.shape, -1, dtype=np.intp)
        open_ = np.ones(r.shape, dtype=bool)
        for i, a, b in zip(seg.tolist(), lo.tolist(), hi.tolist(), strict=True):
            match = open_ & (a <= r) & (r <= b)
            first[match] = i
            open_ &= ~match
            if not open_.any():
                break
        rows = np.flatnonzero(first >= 0)
        return rows, first[rows]

    def _interpolate(self, r: FloatArray, i: npt.NDArray[np.intp]) -> FloatArray:
        x1, x2, y1, y2 = self.x[i], self.x[i + 1], self.y[i], self.y[i + 1]
        with np.errstate(all="ignore"):
            # Same operations in the same order as the reference, so results are bit-identical.
            value = y1 + (y2 - y1) * (r - x1) / (x2 - x1)
        return np.where(x2 == x1, y1, value)

    def points(self) -> list[tuple[float, float]]:
        """The table as a list of ``(raw, calibrated)`` Python floats."""
        return [(float(a), float(b)) for a, b in zip(self.x.tolist(), self.y.tolist(), strict=True)]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LookupTable):
            return NotImplemented
        return bool(np.array_equal(self.x, other.x, equal_nan=True) and np.array_equal(self.y, other.y, equal_nan=True))

    def __hash__(self) -> int:
        return hash((self.x.tobytes(), self.y.tobytes()))


@dataclass(frozen=True)
class Calibrator:
    """The calibration found in a model directory: which kind, its tables, and where they came from.

    ``tables`` is ``{1: table}`` for ``percentile`` and ``binary`` (the class-1 probability is
    calibrated) and ``{class_index: table}`` for ``multiclass``. Built by ``load_calibrator``;
    applied by ``calibrate``.
    """

    kind: CalibrationKind
    tables: Mapping[int, LookupTable]
    source: str
    # Reasons already warned about, so an unsupported setup logs once per calibrator, not per request.
    _warned: set[str] = field(default_factory=set, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in ("percentile", "binary", "multiclass"):
            raise ValueError(f"kind must be 'percentile', 'binary' or 'multiclass', got {self.kind!r}")
        tables = dict(self.tables)
        for key, table in tables.items():
            if isinstance(key, bool) or not isinstance(key, int) or key < 0:
                raise ValueError(f"table keys must be class indices (int >= 0), got {key!r}")
            if not isinstance(table, LookupTable):
                raise ValueError(f"table for class {key} must be a LookupTable, got {type(table).__name__}")
        if self.kind == "multiclass" and not tables:
            raise ValueError("a multiclass calibrator needs at least one class table")
        if self.kind != "multiclass" and list(tables) != [1]:
            raise ValueError(f"a {self.kind} calibrator holds exactly one table, keyed 1 (the class-1 probability)")
        object.__setattr__(self, "tables", types.MappingProxyType(tables))

    def _warn_once(self, reason: str, message: str, *args: object) -> None:
        if reason not in self._warned:
            self._warned.add(reason)
            logger.warning(message, *args)


def _read_table(path: Path, model_dir: Path) -> LookupTable:
    name = path.relative_to(model_dir).as_posix()
    try:
        data: Any = load_data_pickle(path)
    except OSError as exc:
        raise ModelLoadError(f"calibration file {name} cannot be read: {exc}") from None
    except MainsailError as exc:
        raise ModelLoadError(f"calibration file {name} cannot be loaded ({_ONLY_TABLES}): {exc.message}") from None
    except Exception as exc:  # whatever else a corrupt pickle raises: still a load error naming the file
        raise ModelLoadError(f"calibration file {name} cannot be loaded: {type(exc).__name__}: {exc}") from exc
    try:
        return LookupTable.from_points(data)
    except ValueError as exc:
        raise ModelLoadError(f"calibration file {name} is not a lookup table ({_ONLY_TABLES}): {exc}") from None


def load_calibrator(model_dir: Path) -> Calibrator | None:
    """Load the calibration under ``<model_dir>/calibration/``, or ``None`` when there is none.

    Precedence, as in the reference handlers: ``percentile_score.pkl``, then
    ``calibration_model.pkl``, then the directory ``calibration_models/`` with one
    ``calibration_model_class_<k>.pkl`` per class index ``k`` (other files there are ignored with a
    warning; a directory with no class file counts as no calibration). Files are read with the
    restricted data-only unpickler. A file that cannot be read or does not hold a list of
    ``(raw, calibrated)`` pairs raises ``ModelLoadError`` naming it; the caller decides whether to
    fail the load or serve raw scores.
    """
    root = model_dir / CALIBRATION_DIR
    if not root.is_dir():
        return None
    for name, kind in ((PERCENTILE_FILE, "percentile"), (BINARY_FILE, "binary")):
        path = root / name
        if path.exists():
            table = _read_table(path, model_dir)
            logger.info("loaded %s calibration (%s points) from %s", kind, table.x.size, path)
            return Calibrator("percentile" if kind == "percentile" else "binary", {1: table}, str(path))
    class_dir = root / MULTICLASS_DIR
    if not class_dir.is_dir():
        return None
    tables: dict[int, LookupTable] = {}
    sources: list[str] = []
    for path in sorted(class_dir.iterdir()):
        match = _CLASS_FILE.fullmatch(path.name)
        if match is None or not path.is_file():
            logger.warning("ignoring %s: calibration files there are named calibration_model_class_<k>.pkl", path)
            continue
        tables[int(match.group(1))] = _read_table(path, model_dir)
        sources.append(str(path))
    if not tables:
        logger.warning("%s holds no calibration_model_class_<k>.pkl file: no calibration", class_dir)
        return None
    logger.info("loaded multiclass calibration for classes %s from %s", sorted(tables), class_dir)
    return Calibrator("multiclass", tables, ", ".join(sources))


def _raw_copy(scores: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    return np.array(scores, copy=True)


def _calibrate_class1(scores: np.ndarray[Any, Any], calibrator: Calibrator) -> np.ndarray[Any, Any]:
    if scores.ndim != 2 or scores.shape[1] != 2:
        calibrator._warn_once(
            f"shape{scores.shape[1:]}",
            "%s calibration (%s) needs (N, 2) binary scores, got shape %s: serving raw scores",
            calibrator.kind, calibrator.source, scores.shape,
        )
        return _raw_copy(scores)
    table = calibrator.tables[1]
    if scores.shape[0] == 1:  # one record: plain floats, a few microseconds instead of a dozen numpy calls
        value = np.array([table.value(float(scores[0, 1]))])
    else:
        value = table(scores[:, 1])
    out = np.empty_like(scores)
    out[:, 1] = value
    if calibrator.kind == "percentile":
        out[:, 0] = 1.0 - value  # the reference takes the complement before storing class 1
    else:
        out[:, 0] = 1 - out[:, 1]  # ...and here after storing it, in the scores' dtype
    return out


def _calibrate_multiclass(scores: np.ndarray[Any, Any], calibrator: Calibrator) -> np.ndarray[Any, Any]:
    if scores.ndim != 2:
        calibrator._warn_once(
            f"ndim{scores.ndim}",
            "multiclass calibration (%s) needs (N, C) scores, got shape %s: serving raw scores",
            calibrator.source, scores.shape,
        )
        return _raw_copy(scores)
    out = np.array(scores, copy=True)
    for k, table in calibrator.tables.items():
        if k < scores.shape[1]:
            out[:, k] = table(scores[:, k])
    with np.errstate(all="ignore"):
        normalised: np.ndarray[Any, Any] = out / out.sum(axis=1)[:, np.newaxis]
    return normalised.astype(scores.dtype, copy=False)


def calibrate(scores: np.ndarray[Any, Any], calibrator: Calibrator | None) -> np.ndarray[Any, Any]:
    """Return calibrated probabilities as a NEW array with the shape and dtype of ``scores``.

    ``scores`` is ``(N, C)``. ``None`` gives a copy. ``percentile``/``binary`` with ``C == 2``:
    column 1 is the table applied to column 1 and column 0 its complement (for ``binary`` the
    complement of the stored, dtype-rounded value, for ``percentile`` of the float64 value, as the
    reference computes them). Any other shape serves raw scores (the reference does not support
    percentile calibration of multiclass scores), with a warning logged once per calibrator.
    ``multiclass``: each class with a table is calibrated, the others kept, then every row is
    divided by its sum. Never raises: any failure logs a warning and returns a raw copy.
    """
    if calibrator is None:
        return _raw_copy(scores)
    try:
        if calibrator.kind == "multiclass":
            return _calibrate_multiclass(scores, calibrator)
        return _calibrate_class1(scores, calibrator)
    except Exception as exc:  # calibration must never fail a prediction
        logger.warning("calibration (%s) failed, serving raw scores: %s: %s", calibrator.source,
                       type(exc).__name__, exc)
        return _raw_copy(scores)
