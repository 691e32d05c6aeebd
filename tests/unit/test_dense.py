"""Dense requests: keys from array bytes, compact ledger rows, batched commits, the objective."""

from __future__ import annotations

import math
import os
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from bbzo.blackbox.budget import Budget
from bbzo.blackbox.protocol import Request, Response, dumps_dense, loads_dense
from bbzo.blackbox.query.layer import QueryLayer
from bbzo.blackbox.query.ledger import Ledger
from bbzo.blackbox.query.objective import (
    LayerObjective,
    as_objective,
    class_probability,
    cross_entropy,
)
from bbzo.blackbox.targets.base import Target
from bbzo.blackbox.targets.classifier import TorchClassifier
from bbzo.errors import BudgetExceeded, InputError, ObjectiveError

SHAPE = (1, 4, 4)


class Counting(torch.nn.Module):
    """A tiny image classifier that records the batch size of every forward pass."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(len(x))
        return self.net(x)


def target(max_batch: int = 256) -> TorchClassifier:
    return TorchClassifier(Counting(), "tiny", device="cpu", max_batch=max_batch)


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, *SHAPE), dtype=np.float32)


def dense(x: np.ndarray) -> Request:
    return Request("classify", {"inputs": x[None]})


# --- keys --------------------------------------------------------------------------------

def test_key_is_stable_across_array_types_and_tracks_bytes_dtype_shape():
    x = images(1)[0]
    key = dense(x).key("t")
    assert Request("classify", {"inputs": torch.from_numpy(x.copy())[None]}).key("t") == key
    assert Request("classify", {"inputs": np.ascontiguousarray(x[None])}).key("t") == key
    assert dense(x) == Request("classify", {"inputs": torch.from_numpy(x.copy())[None]})

    changed = x.copy()
    changed[0, 2, 3] = np.nextafter(changed[0, 2, 3], np.float32(2))  # one element, one ulp
    others = [dense(changed),
              Request("classify", {"inputs": x[None].astype(np.float64)}),  # dtype
              Request("classify", {"inputs": x.reshape(1, 2, 8)[None]}),    # shape
              Request("classify", {"inputs": x[None]}, {"temperature": 1}),  # JSON part
              Request("classify", {"inputs": x[None].tolist()})]             # JSON form
    keys = {key} | {r.key("t") for r in others}
    assert len(keys) == 1 + len(others)
    assert dense(x).key("other-target") != key


def test_keys_follow_the_documented_formula_so_old_ledgers_still_answer():
    import hashlib

    batch = Request.dense_batch("classify", "inputs", images(3)[:, None])
    for request in [*batch, Request("generate", {"prompt": "p"}, {"max_tokens": 2})]:
        head = hashlib.sha256(f"t\n{request.to_json()}".encode())
        if request.dense:
            head.update(b"\0" + hashlib.sha256(request.array_bytes()).digest())
        assert request.key("t") == head.hexdigest()
    assert len({r.key("t") for r in batch}) == 3 and batch[0].key("u") != batch[0].key("t")


def test_dense_request_is_frozen_and_light():
    x = images(1)[0][None]
    request = Request("classify", {"inputs": x, "note": ["a"]})
    key = request.key("t")
    x[0, 0, 0, 0] = 7.0  # the caller edits its array afterwards
    assert request.key("t") == key and request.payload["inputs"][0, 0, 0, 0] != 7.0
    assert not request.payload["inputs"].flags.writeable
    assert request.dense and not Request("classify", {"inputs": [[1.0]]}).dense
    text = request.to_json()
    assert len(text) < 200 and '"shape":[1,1,4,4]' in text and '"dtype":"<f4"' in text
    assert request.array_bytes() == request.payload["inputs"].tobytes()


def test_dense_batch_builds_the_same_requests_as_one_by_one():
    rows = torch.from_numpy(images(4)[:, None])  # (4, 1, *SHAPE)
    batch = Request.dense_batch("classify", "inputs", rows, {"top": [1, 2]})
    single = [Request("classify", {"inputs": row}, {"top": [1, 2]}) for row in rows]
    assert [r.key("t") for r in batch] == [r.key("t") for r in single]
    assert len({r.key("t") for r in batch}) == 4
    for a, b in zip(batch, single, strict=True):
        assert np.array_equal(a.payload["inputs"], b.payload["inputs"])
        assert a.params == b.params and a.array_bytes() == b.array_bytes()
    batch[1].params["top"].append(3)  # each request owns its params
    assert batch[2].params == {"top": [1, 2]}


def test_a_recipe_keys_a_dense_request_by_the_recipe_never_like_content():
    import hashlib

    x = images(2)
    key = Request("classify", {"inputs": x}, recipe=b"seed 1").key("t")
    frozen = Request("classify", {"inputs": x}).to_json()  # same dump: kind, dtype, shape
    tail = b"\0\0recipe" + hashlib.sha256(b"seed 1").digest()
    assert key == hashlib.sha256(f"t\n{frozen}".encode() + tail).hexdigest()
    # the caller vouches that the recipe decides the arrays: other bytes, same key
    assert Request("classify", {"inputs": x + 1}, recipe=b"seed 1").key("t") == key
    others = [Request("classify", {"inputs": x}, recipe=b"seed 2"),
              Request("classify", {"inputs": x}),  # content key of the same arrays
              Request("classify", {"inputs": x[:1]}, recipe=b"seed 1"),  # shape
              Request("classify", {"inputs": x}, {"temperature": 1}, recipe=b"seed 1")]
    assert len({key} | {r.key("t") for r in others}) == 1 + len(others)
    assert Request("classify", {"inputs": x}, recipe=b"seed 1").key("u") != key
    assert Request("classify", {"inputs": x}, recipe=b"seed 1") != others[1]
    assert Request("classify", {"inputs": x}, recipe=b"seed 1").payload["inputs"].flags \
        .writeable is False  # still a private, frozen copy


def test_dense_batch_with_recipes_builds_the_recipe_keyed_requests():
    rows = images(3)[:, None]
    recipes = [b"a", b"b", b"c"]
    batch = Request.dense_batch("classify", "inputs", rows, recipes=recipes)
    single = [Request("classify", {"inputs": row}, recipe=r)
              for row, r in zip(rows, recipes, strict=True)]
    assert [r.key("t") for r in batch] == [r.key("t") for r in single]
    assert [r.recipe for r in batch] == recipes and batch == single
    assert len({r.key("t") for r in batch}) == 3
    assert not {r.key("t") for r in batch} & {
        r.key("t") for r in Request.dense_batch("classify", "inputs", rows)}
    with pytest.raises(InputError, match="one recipe per row"):
        Request.dense_batch("classify", "inputs", rows, recipes=recipes[:2])
    with pytest.raises(InputError, match="non-empty bytes"):
        Request.dense_batch("classify", "inputs", rows, recipes=[b"a", b"", b"c"])


@pytest.mark.parametrize("payload,recipe,needle", [
    ({"inputs": [[1.0]]}, b"r", "plain JSON"), ({"inputs": np.ones((1, 2))}, b"", "non-empty"),
    ({"inputs": np.ones((1, 2))}, "r", "bytes")])
def test_a_bad_recipe_is_refused(payload, recipe, needle):
    with pytest.raises(InputError, match=needle):
        Request("classify", payload, recipe=recipe)


def test_a_recipe_keyed_request_is_answered_from_the_ledger_on_a_rerun(tmp_path):
    model, x = target(), images(3)
    with Ledger(tmp_path / "l.sqlite") as ledger:
        first = QueryLayer(model, ledger=ledger).submit(
            [Request("classify", {"inputs": x}, recipe=b"r")])
        again = QueryLayer(model, ledger=ledger).submit(
            [Request("classify", {"inputs": x}, recipe=b"r")])
    assert model.module.batches == [3] and again[0].cached and not first[0].cached
    assert np.array_equal(first[0].output["probs"], again[0].output["probs"])


def test_a_classify_request_is_as_many_queries_as_it_has_inputs():
    assert Request("classify", {"inputs": images(7)}).queries == 7
    assert Request("classify", {"inputs": torch.zeros(3, 2)}).queries == 3
    assert Request("classify", {"inputs": [[0.5, 0.5]] * 4}).queries == 4  # JSON lists
    batch = Request.dense_batch("classify", "inputs", images(6).reshape(2, 3, *SHAPE))
    assert [r.queries for r in batch] == [3, 3]
    assert [r.queries for r in Request.dense_batch("classify", "inputs", images(2)[:, None])] \
        == [1, 1]
    assert Request("embed", {"texts": ["a", "b", "c"]}).queries == 1  # other kinds: one each
    assert Request("chat", {"messages": [{"role": "user", "content": "x"}]}).queries == 1


@pytest.mark.parametrize("bad", [np.array([1 + 2j]), np.array(["a"]), np.array([None])])
def test_non_numeric_arrays_are_refused(bad):
    with pytest.raises(InputError, match="dtype"):
        Request("classify", {"inputs": bad})


def test_codec_round_trip_keeps_arrays_and_json():
    tree = {"probs": np.arange(6, dtype=np.float64).reshape(2, 3), "n": [1, "x"],
            "ids": torch.tensor([3, 4], dtype=torch.int16), "nested": [{"m": np.ones(2)}]}
    text, arrays = dumps_dense(tree)
    back = loads_dense(text, b"".join(a.tobytes() for a in arrays))
    assert np.array_equal(back["probs"], tree["probs"]) and back["n"] == [1, "x"]
    assert back["ids"].dtype == np.int16 and back["ids"].tolist() == [3, 4]
    assert np.array_equal(back["nested"][0]["m"], np.ones(2))


# --- ledger ------------------------------------------------------------------------------

def row_of(path, key: str) -> tuple:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT request, request_arrays, response, response_arrays FROM"
                          " queries WHERE key = ?", (key,)).fetchone()


@pytest.mark.parametrize("store", [False, True])
def test_payload_bytes_stored_only_on_request(tmp_path, store):
    path = tmp_path / "l.sqlite"
    x = images(1, seed=3)[0]
    request = dense(x)
    with Ledger(path, store_payloads=store) as ledger:
        out = QueryLayer(target(), ledger=ledger).submit([request])[0]
    text, stored, _, answer = row_of(path, request.key("tiny"))
    assert '"shape":[1,1,4,4]' in text and len(text) < 200
    assert answer is not None and len(answer) == 3 * 8  # 3 float64 probabilities
    blob = b"".join(f.read_bytes() for f in tmp_path.iterdir())
    if store:
        assert stored == x.tobytes() and x.tobytes() in blob
    else:
        assert stored is None and x.tobytes() not in blob
    assert isinstance(out.output["probs"], np.ndarray) and out.output["probs"].shape == (1, 3)


def test_repeated_dense_request_is_answered_from_the_ledger(tmp_path):
    path = tmp_path / "l.sqlite"
    model = target()
    budget = Budget(max_queries=100)
    requests = [dense(x) for x in images(6)]
    first = QueryLayer(model, ledger=Ledger(path), budget=budget).submit(requests)
    assert budget.queries == 6 and model.module.batches == [6]
    again = QueryLayer(model, ledger=Ledger(path), budget=budget).submit(
        [Request("classify", {"inputs": torch.from_numpy(r.payload["inputs"].copy())})
         for r in requests])
    assert all(r.cached for r in again) and budget.queries == 6 and model.module.batches == [6]
    for a, b in zip(first, again, strict=True):
        assert np.array_equal(a.output["probs"], b.output["probs"])
    assert Ledger(path).summary().cache_hits == 6


def test_a_batch_is_a_few_transactions_not_one_per_request(tmp_path):
    ledger = Ledger(tmp_path / "l.sqlite")
    statements: list[str] = []
    ledger._db.set_trace_callback(statements.append)
    layer = QueryLayer(target(), ledger=ledger)
    requests = [dense(x) for x in images(256)]
    layer.submit(requests)
    assert sum(s.strip().upper() == "COMMIT" for s in statements) == 1  # one local call
    statements.clear()
    layer.submit(requests)
    assert sum(s.strip().upper() == "COMMIT" for s in statements) == 1  # the hit counts


def test_v1_ledger_gains_the_array_columns_and_keeps_its_answers(tmp_path):
    path = tmp_path / "old.sqlite"
    request = Request("generate", {"prompt": "p"}, {"max_tokens": 2})
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE queries (key TEXT PRIMARY KEY, target TEXT NOT NULL, kind TEXT"
                   " NOT NULL, request TEXT NOT NULL, status TEXT NOT NULL, response TEXT,"
                   " error TEXT, prompt_tokens INTEGER NOT NULL DEFAULT 0, completion_tokens"
                   " INTEGER NOT NULL DEFAULT 0, cost REAL NOT NULL DEFAULT 0, latency_s REAL,"
                   " attempts INTEGER NOT NULL DEFAULT 0, hits INTEGER NOT NULL DEFAULT 0,"
                   " created_at REAL NOT NULL, updated_at REAL NOT NULL)")
        db.execute("INSERT INTO queries (key, target, kind, request, status, response,"
                   " created_at, updated_at) VALUES (?, 't', 'generate', ?, 'ok', ?, 0, 0)",
                   (request.key("t"), request.to_json(), '{"output": {"text": "ok"}, "meta": {}}'))
        db.execute("PRAGMA user_version=1")
    with Ledger(path) as ledger:
        assert ledger.answers([request.key("t")])[request.key("t")].output == {"text": "ok"}
        x = images(1)[0]
        ledger.record("t", [(dense(x).key("t"), dense(x),
                             QueryLayer(target()).submit([dense(x)])[0])], 1)
        assert ledger.summary().answered == 2


# --- the objective adapter ---------------------------------------------------------------

def expected_ce(module: Counting, X: np.ndarray, label: int) -> np.ndarray:
    with torch.no_grad():
        p = module.net(torch.from_numpy(X.reshape(-1, *SHAPE))).softmax(-1).double().numpy()
    return -np.log(p[:, label])


def test_objective_counts_sent_and_cached_rows_and_shares_the_budget(tmp_path):
    model = target()
    layer = QueryLayer(model, ledger=Ledger(tmp_path / "l.sqlite"), budget=Budget(max_queries=9))
    fun = LayerObjective(layer, reduce=cross_entropy(2), shape=SHAPE)
    assert fun.meters_queries and fun.budget is layer.budget
    X = images(5).reshape(5, -1).astype(np.float64)
    batch = np.concatenate([X, X[:2]])  # two rows repeated within the batch
    y = fun(batch)
    assert isinstance(y, np.ndarray) and y.shape == (7,)
    assert np.allclose(y, expected_ce(model.module, batch.astype(np.float32), 2), atol=1e-6)
    assert (fun.nsent, fun.ncached, layer.budget.queries) == (5, 2, 5)
    assert model.module.batches == [5]  # one stacked forward pass

    t = torch.from_numpy(X[:3])
    yt = fun(t)  # all in the ledger: free
    assert isinstance(yt, torch.Tensor) and yt.dtype == torch.float64
    assert torch.allclose(yt, torch.from_numpy(y[:3]))
    assert (fun.nsent, fun.ncached, layer.budget.queries) == (5, 5, 5)

    fresh = images(5, seed=1).reshape(5, -1)
    with pytest.raises(BudgetExceeded):  # 5 new rows, 4 queries left: nothing is sent
        fun(np.concatenate([X[:2], fresh]))
    assert (fun.nsent, layer.budget.queries, model.module.batches) == (5, 5, [5])
    assert layer.ledger.summary().requests == 5
    fun(np.concatenate([X[:2], fresh[:4]]))  # 4 new rows fit exactly
    assert (fun.nsent, fun.ncached, layer.budget.queries) == (9, 7, 9)


def test_as_objective_wraps_a_target_and_checks_its_arguments(tmp_path):
    fun = as_objective(target(), reduce=class_probability(1), ledger=Ledger(tmp_path / "l"),
                       budget=10, shape=SHAPE)
    y = fun(torch.from_numpy(images(2).reshape(2, -1)))
    assert y.shape == (2,) and bool(((y > 0) & (y < 1)).all())
    assert fun.budget.max_queries == 10 and fun.nsent == 2
    with pytest.raises(InputError, match="already has"):
        as_objective(fun.layer, reduce=cross_entropy(0), budget=5)
    with pytest.raises(InputError, match="reshaped"):
        fun(np.zeros((1, 15)))
    with pytest.raises(InputError, match="label"):
        cross_entropy(-1)
    assert math.isclose(cross_entropy(0)({"probs": [[0.0, 1.0]]}), -math.log(1e-12))


def test_the_engine_spends_the_layers_budget_only_for_rows_really_sent(tmp_path):
    """minimize / estimate_gradient on the adapter: one Budget, ledger hits free and counted."""
    import bbzo

    layer = QueryLayer(target(), ledger=Ledger(tmp_path / "l.sqlite"),
                       budget=Budget(max_queries=200))
    fun = LayerObjective(layer, reduce=cross_entropy(2), shape=SHAPE)
    x0 = images(1).reshape(-1).astype(np.float64)
    first = bbzo.minimize(fun, x0, q=4, lr=0.1, maxiter=5, seed=0)
    assert first.nqueries == 5 * 8 and fun.nsent == 40 and layer.budget.queries == 40
    again = bbzo.minimize(fun, x0, q=4, lr=0.1, maxiter=5, seed=0)  # same seed: all cached
    assert again.fun == first.fun and fun.nsent == 40 and fun.ncached == 40
    assert layer.budget.queries == 40
    with pytest.raises(InputError, match="budget"):
        bbzo.minimize(fun, x0, budget=Budget(max_queries=10), maxiter=1)
    G, n = bbzo.estimate_gradient(fun, images(3, seed=2).reshape(3, -1).astype(np.float64),
                                  q=2)
    assert G.shape == (3, 16) and n == 3 * 4 and fun.nsent == 52
    with pytest.raises(bbzo.BudgetExceeded):  # 148 left: a 160-row batch is refused whole
        bbzo.estimate_gradient(fun, images(20, seed=3).reshape(20, -1).astype(np.float64), q=4)
    assert layer.budget.queries == 52


def test_fresh_answers_are_what_a_resumed_run_reads_back(tmp_path):
    """Flat array answers take a shortcut past the JSON codec; other answers do not. Either
    way ``record`` returns exactly what ``answers`` reads back: little-endian C-ordered private
    copies, ``meta`` kept."""
    requests = [dense(x) for x in images(6, seed=4)]
    keys = [r.key("t") for r in requests]
    big_endian = np.arange(6, dtype=">f8").reshape(2, 3)
    fortran = np.asfortranarray(np.arange(6, dtype=np.int16).reshape(2, 3))
    shared = np.array([[0.25, 0.75]])
    outputs = [({"probs": big_endian}, {}), ({"probs": fortran, "ids": shared}, {}),
               ({"probs": shared}, {}), ({"probs": shared}, {"note": "fallback"}),
               ({"probs": shared, "n": 3}, {}), ({7: shared}, {})]  # JSON keys are strings
    with Ledger(tmp_path / "l.sqlite") as ledger:
        fresh = ledger.record("t", [(k, r, Response(o, meta=m)) for k, r, (o, m)
                                    in zip(keys, requests, outputs, strict=True)], 1)
        stored = ledger.answers(keys)
    for key, new, (output, meta) in zip(keys, fresh, outputs, strict=True):
        back = stored[key]
        assert new.meta == back.meta == meta and set(new.output) == set(back.output)
        for name, value in output.items():
            a, b = new.output[str(name)], back.output[str(name)]
            if not isinstance(value, np.ndarray):
                assert a == b == value
                continue
            assert a.dtype == b.dtype and a.dtype.str.startswith(("<", "|"))
            assert a.shape == b.shape == value.shape and np.array_equal(a, value)
            assert a.flags.c_contiguous and a.flags.writeable and not np.shares_memory(a, value)
    fresh[2].output["probs"][0, 0] = 9.0  # the target's array and the other answers keep theirs
    assert shared[0, 0] == 0.25 and fresh[3].output["probs"][0, 0] == 0.25


def test_local_answers_skip_the_fsync_and_remote_answers_keep_it(tmp_path):
    class Remote(Target):
        id = "remote"
        capabilities = frozenset({"generate"})
        remote = True

        async def acall(self, request):
            return Response({"text": "ok"})

    ledger = Ledger(tmp_path / "l.sqlite")
    synchronous = {}
    QueryLayer(target(), ledger=ledger).submit([dense(images(1)[0])])
    synchronous["local"] = ledger._db.execute("PRAGMA synchronous").fetchone()[0]
    QueryLayer(Remote(), ledger=ledger).submit([Request("generate", {"prompt": "p"})])
    synchronous["remote"] = ledger._db.execute("PRAGMA synchronous").fetchone()[0]
    assert synchronous == {"local": 1, "remote": 2}  # NORMAL, FULL
    assert ledger.summary().answered == 2


KILLED_CHILD = """
import sys
import numpy as np
from bbzo.blackbox.protocol import Request, Response
from bbzo.blackbox.query.layer import QueryLayer
from bbzo.blackbox.query.ledger import Ledger
from bbzo.blackbox.targets.base import Target

class Local(Target):
    id = "local"
    capabilities = frozenset({"classify"})
    max_batch = 8

    def call(self, requests):
        return [Response({"probs": np.array([[0.5, 0.5]])}) for _ in requests]

layer = QueryLayer(Local(), ledger=Ledger(sys.argv[1]), concurrency=1)
with open(sys.argv[2], "w") as log:
    for i in range(100000):
        rows = np.arange(24 * i, 24 * (i + 1), dtype=np.float32).reshape(8, 1, 3)
        layer.submit(Request.dense_batch("classify", "inputs", rows))  # 8 new requests
        log.write(f"{8 * (i + 1)}\\n")
        log.flush()
"""


def test_local_answers_handed_back_survive_kill_9(tmp_path):
    """Without the fsync a local answer is still in the WAL file before it is handed back."""
    path, progress = tmp_path / "l.sqlite", tmp_path / "progress.txt"
    child = subprocess.Popen([sys.executable, "-c", KILLED_CHILD, str(path), str(progress)])

    def handed_back() -> int:
        lines = progress.read_text().split() if progress.exists() else []
        return int(lines[-1]) if lines else 0

    deadline = time.monotonic() + 60
    while handed_back() < 200 and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL
    done = handed_back()
    summary = Ledger(path).summary()
    assert 200 <= done <= summary.answered and summary.pending == 0


def test_batched_reduce_gives_the_values_of_one_by_one():
    rng = np.random.default_rng(5)
    probs = rng.dirichlet(np.ones(4), size=6)
    probs[2, 1] = 0.0  # floored, not inf
    outputs = [{"probs": p[None]} for p in probs[:3]] + [{"probs": [p.tolist()]}
                                                         for p in probs[3:]]
    for reduce in (cross_entropy(1), class_probability(3)):
        many = reduce.many(outputs)
        assert many.dtype == np.float64 and many.shape == (6,)
        assert many.tolist() == [reduce(output) for output in outputs]
    assert cross_entropy(1).many(outputs)[2] == -math.log(1e-12)
    ragged = outputs[:2] + [{"probs": np.ones((1, 3)) / 3}]  # falls back to one by one
    assert np.allclose(class_probability(0).many(ragged), [p[0] for p in probs[:2]] + [1 / 3])
    with pytest.raises(ObjectiveError, match="one input"):
        cross_entropy(0).many(outputs[:2] + [{"probs": np.ones((2, 4)) / 4}])


def test_concurrent_submits_wait_for_a_local_batch_already_in_flight(tmp_path):
    import asyncio

    model = target(max_batch=3)
    layer = QueryLayer(model, ledger=Ledger(tmp_path / "l.sqlite"))
    requests = [dense(x) for x in images(5, seed=6)]

    async def both():
        return await asyncio.gather(layer.asubmit(requests[:4]), layer.asubmit(requests[2:]))

    left, right = asyncio.run(both())
    assert sum(model.module.batches) == 5  # each row sent once, whichever submit owns it
    assert layer.stats.sent == 5 and layer.stats.cached == 2
    for a, b in ((left[2], right[0]), (left[3], right[1])):
        assert np.array_equal(a.output["probs"], b.output["probs"]) and a.cached != b.cached
