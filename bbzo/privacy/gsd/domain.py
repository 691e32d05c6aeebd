"""Column domains given by the user (never read off the private data) and the encoding of a
table to integer codes.

A domain file has one of two forms:

* sizes: ``{"age": 85, "sex": 2, ...}``: every column already holds integer codes
  0..size−1 (as ``adult-domain.json``);
* rich: ``{"columns": {"sex": {"type": "categorical", "categories": ["F", "M"]},
  "age": {"type": "numeric", "min": 0, "max": 100, "bins": 32},
  "edu": {"type": "codes", "size": 16}}}``. A categorical value is coded by its position in
  ``categories``; a numeric value in [min, max] by its equal-width bin (``bins`` a count,
  default 32) or, when ``bins`` is a list of increasing edges (``[0, 18, 30, 65, 100]``;
  ``min``/``max`` may then be left out, or must equal the first/last edge), by the interval
  [e_i, e_i+1) it falls in (the last one closed); decoded to the bin's midpoint.

Column order is the domain's. A value outside its column's domain is an ``InputError`` naming
the column, the data row (1-based, header not counted) and the value.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bbzo.checks import int_at_least
from bbzo.errors import InputError

KINDS = ("codes", "categorical", "numeric")
DEFAULT_BINS = 32


@dataclass(frozen=True)
class Column:
    """One column's domain: ``size`` codes; ``categories`` (categorical) or ``low``/``high``
    (numeric, ``size`` equal-width bins)."""

    name: str
    kind: str
    size: int
    categories: tuple[str, ...] = ()
    low: float = 0.0
    high: float = 0.0
    edges: tuple[float, ...] = ()

    def describe(self) -> str:
        if self.kind == "codes":
            return f"integer codes 0..{self.size - 1}"
        if self.kind == "categorical":
            return f"one of {len(self.categories)} categories"
        return f"a number in [{self.low:g}, {self.high:g}]"

    def encode(self, values: Sequence[Any]) -> np.ndarray:
        """(n,) int64 codes of ``values``; the first value outside the domain is an error."""
        if self.kind == "categorical":
            index = {c: i for i, c in enumerate(self.categories)}
            codes = np.array([index.get(str(v).strip(), -1) for v in values], dtype=np.int64)
        else:
            codes = self._codes(_numbers(values))
        bad = np.flatnonzero(codes < 0)
        if bad.size:
            i = int(bad[0])
            raise InputError(f"column {self.name!r}, data row {i + 1}: value {values[i]!r} is "
                             f"outside the domain ({self.describe()}); fix the data or the "
                             f"domain file")
        return codes

    def _codes(self, x: np.ndarray) -> np.ndarray:
        """Codes of numbers ``x`` (n,), −1 where outside the domain (nan included)."""
        if self.kind == "codes":
            ok = (x == np.floor(x)) & (x >= 0) & (x < self.size)
            return np.where(ok, np.nan_to_num(x), -1).astype(np.int64)
        ok = (x >= self.low) & (x <= self.high)
        if self.edges:
            bins = np.searchsorted(np.asarray(self.edges), np.nan_to_num(x), side="right") - 1
            return np.where(ok, np.minimum(bins, self.size - 1), -1).astype(np.int64)
        bins = np.minimum((np.nan_to_num(x) - self.low) / (self.high - self.low) * self.size,
                          self.size - 1)
        return np.where(ok, bins, -1).astype(np.int64)

    def decode(self, codes: np.ndarray) -> list[str]:
        """The values written for ``codes``: the code, the category, or the bin's midpoint."""
        if self.kind == "codes":
            return [str(int(c)) for c in codes]
        if self.kind == "categorical":
            return [self.categories[int(c)] for c in codes]
        if self.edges:
            return [f"{(self.edges[int(c)] + self.edges[int(c) + 1]) / 2:.6g}" for c in codes]
        width = (self.high - self.low) / self.size
        return [f"{self.low + (int(c) + 0.5) * width:.6g}" for c in codes]


class Domain:
    """The columns of a table, in order, with their sizes (``sizes``: (m,) int64)."""

    def __init__(self, columns: Sequence[Column]) -> None:
        if not columns:
            raise InputError("the domain names no column; list at least one")
        self.columns = tuple(columns)
        self.names = [c.name for c in self.columns]
        self.sizes = np.array([c.size for c in self.columns], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.columns)

    @classmethod
    def from_dict(cls, spec: Any) -> Domain:
        """A domain from its sizes or rich form (see the module docstring)."""
        if not isinstance(spec, Mapping) or not spec:
            raise InputError("a domain is a JSON object: {\"column\": size, ...} or "
                             "{\"columns\": {\"column\": {\"type\": ...}, ...}}")
        if set(spec) == {"columns"} and isinstance(spec["columns"], Mapping):
            return cls([_rich_column(str(k), v) for k, v in spec["columns"].items()])
        return cls([Column(str(k), "codes", int_at_least(f"domain size of {k!r}", v))
                    for k, v in spec.items()])

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> Domain:
        """A domain from a JSON file."""
        try:
            spec = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as err:
            raise InputError(f"cannot read the domain file {path}: {err.strerror}") from None
        except json.JSONDecodeError as err:
            raise InputError(f"domain file {path} is not valid JSON ({err})") from None
        return cls.from_dict(spec)

    def encode(self, data: Any) -> np.ndarray:
        """(N, m) int64 codes of ``data`` (a CSV path, a DataFrame, a mapping column →
        values, or an (N, m) array of codes in domain order, checked), columns in domain
        order. The data must have exactly the domain's columns and
        at least one row."""
        if isinstance(data, np.ndarray):
            if data.ndim != 2 or data.shape[1] != len(self):
                raise InputError(f"a code array must have shape (N, {len(self)}), got "
                                 f"{data.shape}")
            as_codes = Domain([Column(c.name, "codes", c.size) for c in self.columns])
            return as_codes.encode({n: data[:, j].tolist() for j, n in enumerate(self.names)})
        columns = read_columns(data)
        missing = [n for n in self.names if n not in columns]
        extra = [n for n in columns if n not in self.names]
        if missing or extra:
            what = (f"lacks the domain's columns {missing}" if missing
                    else f"has columns {extra} the domain does not name")
            raise InputError(f"the data {what}; make the domain file and the data name the "
                             f"same columns")
        rows = {len(v) for v in columns.values()}
        if len(rows) != 1:
            raise InputError("the data's columns have different lengths; give a rectangular "
                             "table")
        if rows == {0}:
            raise InputError("the data has no rows; give a table with at least one row")
        return np.stack([c.encode(columns[c.name]) for c in self.columns], axis=1)

    def decode(self, codes: np.ndarray) -> dict[str, list[str]]:
        """Column name → written values of an (n, m) code table."""
        return {c.name: c.decode(codes[:, j]) for j, c in enumerate(self.columns)}


def _numbers(values: Sequence[Any]) -> np.ndarray:
    """(n,) float64 of ``values`` (numbers or numeric strings), nan where one is not a number."""
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        out = np.full(len(values), np.nan)
        for i, v in enumerate(values):
            try:
                out[i] = float(str(v).strip())
            except ValueError:
                pass
        return out


def _rich_column(name: str, spec: Any) -> Column:
    kind = spec.get("type") if isinstance(spec, Mapping) else None
    if kind not in KINDS:
        raise InputError(f"domain column {name!r} needs \"type\": one of {', '.join(KINDS)}")
    if kind == "codes":
        return Column(name, kind, int_at_least(f"size of {name!r}", spec.get("size")))
    if kind == "categorical":
        cats = spec.get("categories")
        if not isinstance(cats, list) or not cats or len(set(map(str, cats))) != len(cats):
            raise InputError(f"domain column {name!r} needs \"categories\": a list of distinct "
                             f"values")
        return Column(name, kind, len(cats), tuple(str(c) for c in cats))
    bins = spec.get("bins", DEFAULT_BINS)
    if isinstance(bins, list):
        return _edges_column(name, spec, bins)
    low, high = spec.get("min"), spec.get("max")
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (low, high)) \
            or not low < high:
        raise InputError(f"domain column {name!r} needs numbers \"min\" < \"max\" (bounds you "
                         f"know, never read off the private data)")
    bins = int_at_least(f"bins of {name!r}", bins)
    return Column(name, kind, bins, low=float(low), high=float(high))


def _edges_column(name: str, spec: Mapping, edges: list) -> Column:
    """A numeric column binned by the user's ``edges`` (increasing, at least two)."""
    numbers = all(isinstance(e, (int, float)) and math.isfinite(e) for e in edges)
    if len(edges) < 2 or not numbers or any(np.diff(np.asarray(edges, dtype=float)) <= 0):
        raise InputError(f"domain column {name!r}: \"bins\" as a list needs at least two "
                         f"increasing numbers (bin edges)")
    for key, edge in (("min", edges[0]), ("max", edges[-1])):
        if key in spec and spec[key] != edge:
            raise InputError(f"domain column {name!r}: \"{key}\" {spec[key]!r} differs from "
                             f"the bin edge {edge!r}; drop it or make them equal")
    return Column(name, "numeric", len(edges) - 1, low=float(edges[0]), high=float(edges[-1]),
                  edges=tuple(float(e) for e in edges))


PARQUET_SUFFIXES = (".parquet", ".pq")


def read_columns(data: Any) -> dict[str, list[Any]]:
    """Column name → values of a CSV or parquet file path (by its suffix), a DataFrame
    (anything with ``columns`` and column indexing) or a mapping of columns."""
    if isinstance(data, (str, os.PathLike)):
        if Path(data).suffix.lower() in PARQUET_SUFFIXES:
            return read_parquet(data)
        return read_csv(data)
    if isinstance(data, Mapping):
        return {str(k): list(v) for k, v in data.items()}
    if hasattr(data, "columns") and hasattr(data, "__getitem__"):
        return {str(k): list(data[k]) for k in data.columns}
    raise InputError(f"data must be a CSV path, a DataFrame or a mapping of columns, got "
                     f"{type(data).__name__}")


def read_csv(path: str | os.PathLike) -> dict[str, list[str]]:
    """Column name → string values of a CSV file with a header row."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if not header:
                raise InputError(f"{path} is empty; give a CSV file with a header row")
            rows = [r for r in reader if r]
    except OSError as err:
        raise InputError(f"cannot read the data file {path}: {err.strerror}") from None
    if len(set(header)) != len(header):
        raise InputError(f"{path} has repeated column names in its header; make them unique")
    short = next((i for i, r in enumerate(rows) if len(r) != len(header)), None)
    if short is not None:
        raise InputError(f"{path}, data row {short + 1}: {len(rows[short])} fields, the header "
                         f"has {len(header)}; fix that row")
    return {name: [r[j] for r in rows] for j, name in enumerate(header)}


def read_parquet(path: str | os.PathLike) -> dict[str, list[Any]]:
    """Column name → values of a parquet file (pandas with pyarrow)."""
    try:
        import pandas as pd
        import pyarrow  # noqa: F401  (pandas' parquet engine)
    except ImportError:
        raise InputError(f"reading {path} needs pyarrow and pandas: pip install pyarrow "
                         f"pandas (or give a CSV file)") from None
    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read the parquet file {path}: {err}") from None
    if len(set(map(str, frame.columns))) != len(frame.columns):
        raise InputError(f"{path} has repeated column names; make them unique")
    return {str(k): frame[k].tolist() for k in frame.columns}


def write_csv(path: str | os.PathLike, columns: Mapping[str, Sequence[str]],
              order: Sequence[str]) -> None:
    """Write ``columns`` as a CSV file with the header ``order``."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(order)
        writer.writerows(zip(*(columns[n] for n in order), strict=True))
