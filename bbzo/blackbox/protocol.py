"""The bottom of ``bbzo.blackbox``: what travels on the one road every query takes (``Request``
in, ``Response`` out) and how an HTTP status becomes an error. ``targets`` and ``query`` both
import this module and it imports neither.

A request is frozen at creation: its canonical key (the ledger's primary key) is computed once,
so later mutation of the caller's dicts or arrays cannot change it (one popular client computed
keys on mutated messages and missed its own cache).

Two forms of payload:
- *JSON*: plain JSON data; the key is sha256 of the target id and the canonical JSON dump.
- *dense*: JSON data holding numpy arrays or torch tensors (any bool/int/float dtype; bfloat16 is
  widened to float32) anywhere a JSON value may go, e.g. ``{"inputs": image}``. Each array is
  copied (C order, little-endian, read-only numpy) and replaced in the canonical dump by a
  descriptor ``{"$array": {"at": byte offset, "dtype": "<f4", "shape": [...]}}``; the key is
  sha256 of the target id, that dump and a sha256 of the arrays' raw bytes. No array is ever
  turned into JSON numbers, so a numpy array and a CPU torch tensor with the same dtype, shape
  and values give the same key, and changing one element, the dtype or the shape changes it.
  ``payload`` hands targets the numpy copies.
- *recipe-keyed dense*: a dense request whose arrays are a deterministic function of a recipe
  the caller states (``Request(..., recipe=b"...")``, e.g. the seed, block and σ of Gaussian
  noise added to an image of known digest) is keyed by that recipe instead of its arrays'
  bytes: sha256 of the target id, the canonical dump (kinds, dtypes, shapes) and a tagged
  sha256 of the recipe, so no hash runs over the arrays. The caller vouches that equal recipes
  give equal arrays (the recipe must name everything the arrays depend on, the noise source
  included). Recipe keys never equal content keys: what follows the dump in the hashed text is
  ``NUL + 32 bytes`` for a content key and ``NUL + "\\0recipe" + 32 bytes`` for a recipe key
  (canonical JSON holds no NUL).

Kinds of request (a target declares which it supports in ``capabilities``):

| kind | payload | output |
| --- | --- | --- |
| ``chat`` | ``messages`` (OpenAI format) | ``{"text", "logprobs"?}`` (per-token, with top-k) |
| ``letter_logprobs`` | ``prompt``/``messages``, ``letters`` | ``{"logprobs", "coverage"}`` |
| ``option_loglik`` | ``prompt``, ``options`` | ``{"loglik": [float], "ntokens": [int]}`` |
| ``generate`` | ``prompt`` or ``messages`` | ``{"text"}`` |
| ``embed`` | ``texts`` | ``{"embeddings": [[float]]}`` |
| ``classify`` | ``inputs``: nested lists, or an array (dense), | ``{"probs": [[float]]}``, or a |
| | shaped (n, *input_shape) | float64 array (n, classes) for a dense request |

A request is ``queries`` model queries: n for a ``classify`` request of n inputs, 1 for every
other kind (the unit of query budgets, ``LayerStats.queries`` and the ledger's ``queries``).

``params`` holds generation settings (``max_tokens``, ``temperature``, ``top_logprobs``, ``seed``,
``chat_template``...). ``sample`` distinguishes repeated draws of one stochastic request: the
same request with the same sample index is answered from the ledger, a new index is a new draw.

``dumps_dense`` / ``loads_dense`` are the codec for JSON with arrays (the ledger stores dense
answers with it: JSON text with descriptors + the arrays' bytes).
"""

from __future__ import annotations

import email.utils
import functools
import hashlib
import itertools
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from bbzo.errors import InputError, PermanentError, TargetError, TransientError

KINDS = ("chat", "letter_logprobs", "option_loglik", "generate", "embed", "classify")
ARRAY_TAG = "$array"
_RECIPE_TAG = b"\0recipe"  # before a recipe's sha256 in a recipe-keyed request's digest
_DENSE_KINDS = "biuf"  # numpy dtype kinds a dense array may have: bool, int, uint, float


def canonical_json(obj: Any) -> str:
    """Deterministic JSON: sorted keys, no spaces, non-ASCII kept; floats as Python reprs."""
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False)
    except (TypeError, ValueError) as err:
        raise InputError(f"request must be plain JSON data (str, numbers, lists, dicts): {err}") \
            from None


def as_dense(value: Any, *, copy: bool = False) -> np.ndarray | None:
    """``value`` as a C-ordered little-endian numpy array if it is a numpy array or a torch
    tensor (bfloat16 widened to float32), else None; ``copy`` gives a read-only private copy."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach()
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.float()
        value = tensor.resolve_conj().resolve_neg().cpu().numpy()
    elif not isinstance(value, np.ndarray):
        return None
    if value.dtype.kind not in _DENSE_KINDS:
        raise InputError(f"arrays in requests and answers must hold bool, int or float numbers, "
                         f"got dtype {value.dtype}; convert it first")
    dtype = value.dtype.newbyteorder("<")
    if copy:
        value = np.array(value, dtype=dtype, order="C", copy=True)
        value.flags.writeable = False
        return value
    return np.ascontiguousarray(value, dtype=dtype)


def dumps_dense(obj: Any, *, canonical: bool = False) -> tuple[str, list[np.ndarray]]:
    """JSON text of ``obj`` with every array replaced by a descriptor
    ``{"$array": {"at", "dtype", "shape"}}`` (``at``: byte offset in the concatenated raw
    bytes of the arrays, which come back in that order). ``canonical``: sorted keys and no
    NaN/inf (what request keys need). Raises ``InputError`` on other non-JSON data. Arrays are
    not copied."""
    return dumps_dense_many([obj], canonical=canonical)[0]


def dumps_dense_many(objs: list[Any], *,
                     canonical: bool = False) -> list[tuple[str, list[np.ndarray]]]:
    """``dumps_dense`` of each of ``objs``, with one JSON encoder for them all."""
    arrays: list[np.ndarray] = []
    offset = 0

    def describe(value: Any) -> dict:
        nonlocal offset
        array = as_dense(value)
        if array is None:
            raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")
        arrays.append(array)
        described = {ARRAY_TAG: {"at": offset, "dtype": array.dtype.str,
                                 "shape": list(array.shape)}}
        offset += array.nbytes
        return described

    encoder = json.JSONEncoder(sort_keys=canonical, separators=(",", ":"), ensure_ascii=False,
                               allow_nan=not canonical, default=describe)
    out = []
    for obj in objs:
        arrays, offset = [], 0
        try:
            out.append((encoder.encode(obj), arrays))
        except (TypeError, ValueError) as err:
            raise InputError(f"expected JSON data (str, numbers, lists, dicts) or numeric numpy "
                             f"arrays / torch tensors: {err}") from None
    return out


def _join_arrays(tree: Any, arrays: dict[int, np.ndarray]) -> Any:
    """``tree`` (parsed ``dumps_dense`` JSON) with each descriptor replaced by ``arrays[at]``."""
    if isinstance(tree, dict):
        if len(tree) == 1 and ARRAY_TAG in tree:
            return arrays[tree[ARRAY_TAG]["at"]]
        return {k: _join_arrays(v, arrays) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_join_arrays(v, arrays) for v in tree]
    return tree


def loads_dense(text: str, data: bytes | None) -> Any:
    """Inverse of ``dumps_dense``: parse ``text`` and read each descriptor's array (a writable
    copy) from ``data``, the concatenated raw bytes; ``data=None`` means plain JSON."""
    if data is None:
        return json.loads(text)
    skeleton = _skeleton(text) if len(text) <= _SKELETON_CACHE_CHARS else json.loads(text)
    return _rebuild(skeleton, data)


_SKELETON_CACHE_CHARS = 2048


@functools.lru_cache(maxsize=256)
def _skeleton(text: str) -> Any:
    """Parsed JSON of a short dense text (answers of one target share a few); never mutated:
    ``_rebuild`` makes fresh containers."""
    return json.loads(text)


def _rebuild(node: Any, data: bytes) -> Any:
    """A fresh copy of ``node`` with each descriptor replaced by its array read from ``data``."""
    if isinstance(node, dict):
        spec = node.get(ARRAY_TAG) if len(node) == 1 else None
        if isinstance(spec, dict):
            shape = spec["shape"]
            return np.frombuffer(data, np.dtype(spec["dtype"]), math.prod(shape),
                                 spec["at"]).reshape(shape).copy()
        return {key: _rebuild(value, data) for key, value in node.items()}
    if isinstance(node, list):
        return [_rebuild(value, data) for value in node]
    return node


def _recipe_digest(recipe: Any) -> bytes:
    """What follows the NUL after a recipe-keyed request's dump in its key's hashed text."""
    if not isinstance(recipe, bytes) or not recipe:
        raise InputError(f"recipe must be non-empty bytes describing how the arrays were made, "
                         f"or None, got {type(recipe).__name__}")
    return _RECIPE_TAG + hashlib.sha256(recipe).digest()


def _count_queries(kind: str, payload: Any) -> int:
    """``Request.queries``: for ``classify``, the leading dimension of ``payload["inputs"]``
    (an array or a list; at least 1: the target refuses empty inputs); else 1."""
    inputs = payload.get("inputs") if kind == "classify" and isinstance(payload, dict) else None
    if isinstance(inputs, np.ndarray) and inputs.ndim >= 1:
        return max(1, inputs.shape[0])
    if isinstance(inputs, list):
        return max(1, len(inputs))
    return 1


@functools.lru_cache(maxsize=64)
def _key_prefix(target_id: str, frozen: str) -> Any:
    """sha256 state after the target id and a dense request's canonical text: the requests of a
    dense batch share their text, so each key then costs only its arrays' digest (never
    mutated: ``Request.key`` hashes a copy)."""
    return hashlib.sha256(f"{target_id}\n{frozen}".encode())


@dataclass(frozen=True, eq=False)
class Request:
    """One query for a target. Equal requests are those with equal canonical keys.

    Attributes:
        kind: one of ``KINDS``.
        payload: the inputs (see the module table); JSON data, or JSON data holding arrays
            (a dense request; targets receive read-only numpy copies).
        params: generation settings; JSON data.
        sample: index of this draw among repeated draws of the same request.
        recipe: keyword only; for a dense request whose arrays are a deterministic function
            of it, non-empty bytes naming how they were made: the key then covers the recipe
            instead of the arrays' bytes (module doc). None (default): keyed by content.
        queries: model queries the request asks for (computed): the leading dimension n of
            ``payload["inputs"]`` for ``classify`` (at least 1), 1 for every other kind.
    """

    kind: str
    payload: dict
    params: dict = field(default_factory=dict)
    sample: int = 0
    recipe: bytes | None = field(default=None, kw_only=True, repr=False)
    queries: int = field(default=1, init=False)
    _frozen: str = field(default="", repr=False)
    _arrays: tuple[np.ndarray, ...] = field(default=(), repr=False)
    _digest: bytes = field(default=b"", repr=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InputError(f"unknown request kind {self.kind!r}; choose one of "
                             f"{', '.join(KINDS)}")
        if not isinstance(self.sample, int) or self.sample < 0:
            raise InputError(f"sample must be a non-negative integer, got {self.sample!r}")
        recipe = None if self.recipe is None else _recipe_digest(self.recipe)
        body = {"kind": self.kind, "payload": self.payload, "params": self.params,
                "sample": self.sample}
        frozen, arrays = dumps_dense(body, canonical=True)  # == canonical_json without arrays
        object.__setattr__(self, "_frozen", frozen)
        # Keep our own copies so the caller's later edits cannot reach the request.
        data = json.loads(frozen)
        if arrays:
            owned = [as_dense(array, copy=True) for array in arrays]
            if self.recipe is None:
                digest = hashlib.sha256()
                for array in owned:
                    digest.update(array.data)
                object.__setattr__(self, "_digest", digest.digest())
            else:
                object.__setattr__(self, "_digest", recipe)
            object.__setattr__(self, "_arrays", tuple(owned))
            offsets = itertools.accumulate((a.nbytes for a in owned[:-1]), initial=0)
            data = _join_arrays(data, dict(zip(offsets, owned, strict=True)))
        elif self.recipe is not None:
            raise InputError("recipe keys only dense requests (arrays in the payload); this "
                             "payload is plain JSON: drop recipe")
        object.__setattr__(self, "payload", data["payload"])
        object.__setattr__(self, "params", data["params"])
        object.__setattr__(self, "queries", _count_queries(self.kind, self.payload))

    @classmethod
    def dense_batch(cls, kind: str, field: str, rows: Any, params: dict | None = None,
                    sample: int = 0, *,
                    recipes: Sequence[bytes] | None = None) -> list[Request]:
        """``[Request(kind, {field: row}, params, sample) for row in rows]`` (same keys) for an
        array or tensor ``rows`` (n, ...), in one pass: rows are copied together and the JSON
        part is dumped once, so each request costs little more than hashing its row (rows share
        their shape, hence ``queries``). ``recipes``: one ``recipe`` per row (recipe-keyed
        requests, no hash over the rows)."""
        stacked = as_dense(rows, copy=True)
        if stacked is None or stacked.ndim < 1 or len(stacked) == 0:
            raise InputError(f"rows must be a non-empty numpy array or torch tensor (n, ...), "
                             f"got {type(rows).__name__}")
        if recipes is not None and len(recipes) != len(stacked):
            raise InputError(f"recipes must hold one recipe per row ({len(stacked)}), got "
                             f"{len(recipes)}")
        digests = [None] * len(stacked) if recipes is None else [_recipe_digest(r)
                                                                 for r in recipes]
        first = cls(kind, {field: stacked[0]}, params or {}, sample,
                    recipe=None if recipes is None else recipes[0])
        params_text = canonical_json(first.params) if first.params else ""
        out = [first]
        for i, row in enumerate(stacked[1:], 1):
            request = object.__new__(cls)  # a frozen copy of ``first`` with its own row
            request.__dict__.update(
                first.__dict__, payload={field: row}, _arrays=(row,),
                params=json.loads(params_text) if params_text else {},
                recipe=None if recipes is None else recipes[i],
                _digest=digests[i] or hashlib.sha256(row.data).digest())
            out.append(request)
        return out

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Request):
            return NotImplemented
        return (self._frozen, self._digest) == (other._frozen, other._digest)

    def __hash__(self) -> int:
        return hash((self._frozen, self._digest))

    @property
    def dense(self) -> bool:
        """True when the payload holds arrays (keyed by their bytes, not by JSON)."""
        return bool(self._arrays)

    def key(self, target_id: str) -> str:
        """The ledger key: sha256 of the target's id and the canonical request (hex); for a
        dense request, also of the sha256 of its arrays' bytes, or of its tagged recipe."""
        if not self._digest:
            return hashlib.sha256(f"{target_id}\n{self._frozen}".encode()).hexdigest()
        h = _key_prefix(target_id, self._frozen).copy()
        h.update(b"\0" + self._digest)  # NUL never occurs in canonical JSON: no collision
        return h.hexdigest()

    def to_json(self) -> str:
        """The canonical JSON text of the request (what the ledger stores); a dense request's
        arrays appear as descriptors (offset, dtype, shape), their bytes in ``array_bytes``."""
        return self._frozen

    def array_bytes(self) -> bytes | None:
        """The raw bytes of a dense request's arrays, concatenated (None for a JSON request)."""
        return b"".join(a.tobytes() for a in self._arrays) if self._arrays else None


@dataclass
class Usage:
    """Tokens a request consumed (0 for local targets that do not count them)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class Response:
    """A target's answer.

    Attributes:
        output: JSON data, shaped by the request kind (module table).
        usage: tokens used.
        cost: US dollars charged for this request (0.0 when answered from the ledger).
        latency_s: wall time of the call that produced it, seconds.
        cached: True when answered from the ledger without contacting the target.
        meta: notes such as ``{"objective": "sampling-estimate"}`` when a fallback was used.
    """

    output: Any
    usage: Usage = field(default_factory=Usage)
    cost: float = 0.0
    latency_s: float = 0.0
    cached: bool = False
    meta: dict = field(default_factory=dict)


_RETRYABLE = frozenset({408, 409, 425, 429})


def error_for_status(status: int, message: str, retry_after: float | None = None) -> TargetError:
    """The exception a target should raise for an HTTP error ``status``."""
    if status in _RETRYABLE or status >= 500:
        return TransientError(message, status=status, retry_after=retry_after)
    return PermanentError(message, status=status)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date), or None."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return max(0.0, seconds) if math.isfinite(seconds) else None
