"""Classifier targets: torch factories, saved folders, and a real loopback HTTP endpoint."""

from __future__ import annotations

import json
import sys
import threading
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch

from bbzo.blackbox.protocol import Request
from bbzo.blackbox.targets.classifier import (
    HTTPClassifier,
    TorchClassifier,
    check_probs,
    load_classifier,
    save_classifier,
)
from bbzo.blackbox.targets.spec import load_target
from bbzo.blackbox.targets.tuned import OnnxGraph, TunedForward
from bbzo.errors import InputError, PermanentError, TargetError, TransientError

ARCH = '''
import torch


def make(width=4, classes=3):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(width, 8), torch.nn.Tanh(),
                               torch.nn.Linear(8, classes))


def make_probs():
    return torch.nn.Sequential(make(), torch.nn.Softmax(dim=-1))


def not_a_module():
    return 3
'''
RNG = np.random.default_rng(0)
X = RNG.normal(size=(5, 4)).round(3)
W = RNG.normal(size=(4, 3))


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def classify(inputs) -> Request:
    return Request("classify", {"inputs": np.asarray(inputs).tolist()})


@pytest.fixture
def arch(tmp_path):
    path = tmp_path / "arch.py"
    path.write_text(ARCH)
    return path


def probs_of(target, inputs=X) -> np.ndarray:
    return np.array(target.call([classify(inputs)])[0].output["probs"])


def test_torch_factory_softmaxes_logits_and_keeps_probabilities(arch):
    logits_t = load_target(f"torch:{arch}:make", device="cpu")
    probs_t = load_target(f"torch:{arch}:make_probs", device="cpu")
    with torch.no_grad():
        expected = torch.softmax(logits_t.module(torch.tensor(X, dtype=torch.float32)), -1)
    p = probs_of(logits_t)
    assert p.shape == (5, 3) and np.allclose(p, expected.numpy(), atol=1e-6)
    assert np.allclose(probs_of(probs_t), p, atol=1e-6)  # 'auto' does not softmax twice
    forced = TorchClassifier(probs_t.module, "t", outputs="logits")
    assert not np.allclose(probs_of(forced), p, atol=1e-3)  # an explicit rule overrides 'auto'
    assert logits_t.id == f"torch:{arch}:make"


def test_saved_folder_round_trip(arch, tmp_path):
    model = load_target(f"torch:{arch}:make").module
    with torch.no_grad():
        model[0].weight.add_(1.0)  # trained weights differ from what the factory builds
    folder = save_classifier(model, tmp_path / "saved", f"{arch}:make",
                             kwargs={"width": 4, "classes": 3})
    arch.unlink()  # the folder must not depend on the original file
    loaded = load_target(str(folder))
    with torch.no_grad():
        expected = torch.softmax(model(torch.tensor(X, dtype=torch.float32)), -1).numpy()
    assert np.allclose(probs_of(loaded), expected, atol=1e-6)
    assert json.loads((folder / "config.json").read_text())["factory"] == "architecture.py:make"


def test_torchscript_folder(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 2))
    (tmp_path / "ts").mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(model), str(tmp_path / "ts" / "model.pt"))
        loaded = load_classifier(tmp_path / "ts")
        p = probs_of(loaded)
    with torch.no_grad():
        expected = torch.softmax(model(torch.tensor(X, dtype=torch.float32)), -1).numpy()
    assert np.allclose(p, expected, atol=1e-6)


def test_requests_batched_by_input_shape(arch):
    t = load_target(f"torch:{arch}:make")
    requests = [classify(X[:2]), classify(X[2:]), classify(X[:1])]
    together = [np.array(r.output["probs"]) for r in t.call(requests)]
    assert [len(p) for p in together] == [2, 3, 1]
    assert np.allclose(np.concatenate(together[:2]), probs_of(t), atol=1e-6)


@pytest.mark.parametrize("table, rows", [
    ([[0.5, 0.5], [1.0, 0.0]], 3),            # wrong number of rows
    ([[0.5, 0.6], [1.0, 0.0]], 2),            # a row sums to 1.1
    ([[1.2, -0.2], [1.0, 0.0]], 2),           # negative
    ([[float("nan"), 1.0], [1.0, 0.0]], 2),   # NaN
    ([0.5, 0.5], 1),                          # not a table
])
def test_check_probs_rejects(table, rows):
    with pytest.raises(TargetError):
        check_probs(np.array(table), rows, "t")


def test_module_output_validation_and_bad_inputs(arch):
    negative = TorchClassifier(torch.nn.Linear(4, 3), "neg", outputs="probs")
    with pytest.raises(TargetError, match="negative"):
        negative.call([classify(X)])
    flat = TorchClassifier(torch.nn.Flatten(0), "flat")
    with pytest.raises(TargetError, match="shape"):
        flat.call([classify(X)])
    t = load_target(f"torch:{arch}:make")
    for inputs in ([[1.0, 2.0], [3.0]], [], [1.0, 2.0], [["a", "b"]]):
        with pytest.raises(InputError):
            t.call([Request("classify", {"inputs": inputs})])
    with pytest.raises(InputError):
        load_target(f"torch:{arch}:not_a_module")
    with pytest.raises(InputError):
        load_target(f"torch:{arch}:missing")
    with pytest.raises(InputError):
        load_target(f"torch:{arch}:make", temperature=0)


class Handler(BaseHTTPRequestHandler):
    """A classifier endpoint, ``softmax(x @ W)``, and misbehaving variants by path."""

    posts = 0

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        Handler.posts += 1
        x = np.asarray(json.loads(self.rfile.read(int(self.headers["Content-Length"])))["inputs"])
        p = softmax(x @ W)
        replies = {
            "/ok": (200, {"probs": p.tolist()}),
            "/short": (200, {"probs": p[:-1].tolist()}),
            "/negative": (200, {"probs": (p - 0.5).tolist()}),
            "/ragged": (200, {"probs": [[1.0], [0.5, 0.5]]}),
            "/key": (200, {"scores": p.tolist()}),
            "/busy": (503, {"error": "overloaded"}),
            "/missing": (404, {"error": "no such model"}),
        }
        status, body = replies.get(self.path.partition("?")[0], (200, None))
        data = b"this is not json" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        """Quiet."""


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_http_classifier_against_loopback_server(server):
    t = load_target(f"{server}/ok?token=secret", timeout=5)
    assert isinstance(t, HTTPClassifier) and t.id == f"{server}/ok"
    assert np.allclose(probs_of(t), softmax(X @ W), atol=1e-9)
    before = Handler.posts
    replies = t.call([classify(X[:2]), classify(X[2:])])
    assert Handler.posts == before + 1  # one POST carries the whole batch
    got = np.concatenate([r.output["probs"] for r in replies])
    assert np.allclose(got, softmax(X @ W), atol=1e-9)


@pytest.mark.parametrize("path, error, words", [
    ("/short", TargetError, "shape"),
    ("/negative", TargetError, "negative"),
    ("/ragged", TargetError, "numeric table"),
    ("/key", TargetError, "probs"),
    ("/garbage", TargetError, "JSON"),
    ("/busy", TransientError, "HTTP 503"),
    ("/missing", PermanentError, "HTTP 404"),
])
def test_http_classifier_bad_replies_are_clear_errors(server, path, error, words):
    with pytest.raises(error, match=words):
        HTTPClassifier(server + path, timeout=5).call([classify(X)])


def test_http_unreachable_is_transient():
    probe = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port = probe.server_address[1]
    probe.server_close()  # nothing listens on this port now
    with pytest.raises(TransientError, match="unreachable"):
        HTTPClassifier(f"http://127.0.0.1:{port}/ok", timeout=2).call([classify(X)])


def test_dense_requests_go_to_the_module_as_one_stacked_batch(arch):
    t = load_target(f"torch:{arch}:make", device="cpu")
    shapes = []
    t.module.register_forward_hook(lambda module, args, out: shapes.append(args[0].shape))
    dense = [Request("classify", {"inputs": X[:2].astype(np.float32)}),
             Request("classify", {"inputs": torch.tensor(X[2:], dtype=torch.float64)})]
    replies = t.call(dense)
    assert shapes == [(5, 4)]  # one forward pass over both requests
    probs = [r.output["probs"] for r in replies]
    assert all(isinstance(p, np.ndarray) and p.dtype == np.float64 for p in probs)
    assert [p.shape for p in probs] == [(2, 3), (3, 3)]
    assert np.allclose(np.concatenate(probs), probs_of(t), atol=1e-6)  # same as JSON lists


def test_http_classifier_sends_dense_requests_as_json(server):
    t = HTTPClassifier(f"{server}/ok", timeout=5)
    before = Handler.posts
    replies = t.call([Request("classify", {"inputs": X[:2]}),
                      Request("classify", {"inputs": torch.tensor(X[2:])})])
    assert Handler.posts == before + 1
    got = np.concatenate([r.output["probs"] for r in replies])
    assert np.allclose(got, softmax(X @ W), atol=1e-6)


class Calls(torch.nn.Module):
    """A small CNN (1×8×8 → 3) that counts the times its Python forward runs."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Flatten(), torch.nn.Linear(64, 3))
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.net(x)


def test_tuned_forward_matches_the_module_in_padded_chunks():
    images = np.random.default_rng(2).random((21, 1, 8, 8), dtype=np.float32)
    plain = TorchClassifier(Calls(), "plain", device="cpu")
    tuned = TorchClassifier(Calls(), "tuned", device="cpu", tune=True, chunk=8)
    expected = plain.predict(images)
    got = tuned.predict(images)  # chunks of 8, 8 and 5 (+ 3 zero rows)
    assert got.shape == expected.shape == (21, 3)
    assert np.allclose(got, expected, atol=1e-6)
    assert np.array_equal(got.argmax(1), expected.argmax(1))
    calls = tuned.module.calls  # the module ran only to trace and check the graph
    assert np.allclose(tuned.predict(images[:3]), expected[:3], atol=1e-6)
    assert tuned.module.calls == calls  # the graph answered, not the module


@pytest.mark.parametrize("threads", [1, 3])
def test_tuned_parts_are_cut_in_chunks_of_the_stack_without_stacking(threads):
    rng = np.random.default_rng(4)
    parts = [rng.random((k, 1, 8, 8), dtype=np.float32) for k in (3, 8, 1, 13, 5)]
    tuned = TorchClassifier(Calls(), "tuned", device="cpu", tune=True, chunk=8, threads=threads)
    got = tuned.predict_parts(parts)
    x = torch.from_numpy(np.concatenate(parts))  # 30 rows: chunks 8, 8, 8, 6 (+ 2 zero rows)
    graph = tuned.runner.graphs[(1, 8, 8)]
    with torch.inference_mode():
        raw = torch.cat([graph(torch.cat([x[i:i + 8], x.new_zeros(max(0, i + 8 - len(x)), 1, 8,
                                                                    8)]))[:len(x) - i]
                         for i in range(0, len(x), 8)])
    assert np.array_equal(got, tuned._probabilities(raw))
    assert np.array_equal(tuned.predict(x.numpy()), got)
    for part in parts:
        part.flags.writeable = False  # as a request's arrays
    answers = tuned.call([Request("classify", {"inputs": part}) for part in parts])
    assert np.array_equal(np.concatenate([a.output["probs"] for a in answers]), got)


class DataDependent(torch.nn.Module):
    """Python control flow on the data: a trace would freeze one branch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)[:, :3]
        return flat if x.mean() > 0.5 else -flat


def test_tuning_falls_back_to_the_module_when_the_trace_would_be_wrong():
    bright = np.full((4, 1, 2, 2), 0.9, np.float32)
    dark = np.full((4, 1, 2, 2), 0.1, np.float32)
    t = TorchClassifier(DataDependent(), "dd", device="cpu", tune=True, outputs="logits")
    plain = TorchClassifier(DataDependent(), "dd", device="cpu", outputs="logits")
    assert np.allclose(t.predict(bright), plain.predict(bright))
    assert np.allclose(t.predict(dark), plain.predict(dark))  # the other branch
    assert t.runner.graphs == {(1, 2, 2): None}
    with pytest.raises(InputError, match="chunk"):
        TorchClassifier(DataDependent(), "dd", chunk=0)


def small_cnn_and_images() -> tuple[torch.nn.Module, np.ndarray]:
    from bbzo.defenses.models import small_cnn

    torch.manual_seed(0)
    return small_cnn(1, 28, 10, 8).eval(), \
        np.random.default_rng(5).random((40, 1, 28, 28), dtype=np.float32)


@pytest.mark.parametrize("backend", ["auto", "onnxruntime", "torchscript"])
def test_tuned_backends_agree_with_the_module(backend: str) -> None:
    module, x = small_cnn_and_images()
    tuned = TunedForward(module, chunk=16, threads=2, backend=backend)
    got = tuned.parts([x[:7], x[7:]])  # 40 rows: chunks 16, 16, 8 (+ 8 zero rows)
    with torch.no_grad():
        expected = module(torch.from_numpy(x))
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)
    assert tuned.backends == {(1, 28, 28): "torchscript" if backend == "torchscript"
                              else "onnxruntime"}  # onnxruntime: a bbzo dependency
    assert isinstance(tuned.graphs[(1, 28, 28)], OnnxGraph) == (backend != "torchscript")
    tuned.close()


def test_tuned_auto_falls_back_to_torchscript_without_onnxruntime(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import raises ImportError
    module, x = small_cnn_and_images()
    auto = TunedForward(module, chunk=16, threads=1)
    auto.parts([x])
    only = TunedForward(module, chunk=16, threads=1, backend="onnxruntime")
    only.parts([x])
    assert (auto.backends, only.backends) == ({(1, 28, 28): "torchscript"},
                                              {(1, 28, 28): "module"})
    with pytest.raises(InputError, match="backend must be one of"):
        TunedForward(module, backend="tensorrt")


def test_no_backend_runs_a_module_with_data_dependent_control_flow() -> None:
    for backend in ("onnxruntime", "torchscript"):
        tuned = TunedForward(DataDependent(), chunk=4, backend=backend)
        dark = np.full((4, 1, 2, 2), 0.1, np.float32)
        assert torch.equal(tuned.parts([dark]), -torch.from_numpy(dark).flatten(1)[:, :3])
        assert tuned.backends == {(1, 2, 2): "module"}


def test_bbzo_server_switches_the_client_to_exact_base64_arrays():
    from bbzo.blackbox.serve.classifier import start_classifier_server

    images = np.random.default_rng(3).random((6, 1, 8, 8), dtype=np.float32)
    local = TorchClassifier(Calls(), "local", device="cpu", outputs="logits")
    with start_classifier_server(local) as server:
        assert local.tune  # the server runs the tuned forward
        expected = np.concatenate([local.predict(images[:2]), local.predict(images[2:])])
        remote = HTTPClassifier(server.url, timeout=30)
        assert remote.wire == "json"
        first = remote.call([Request("classify", {"inputs": images[:2]})])
        assert remote.wire == "base64"  # advertised by the first answer
        second = remote.call([Request("classify", {"inputs": images[2:]})])
        assert server.stats()["inputs"] == 6
    got = np.concatenate([first[0].output["probs"], second[0].output["probs"]])
    assert np.array_equal(got, expected)  # bytes on the wire: no rounding either way


@pytest.mark.parametrize("obj", [
    {"dtype": "<i4", "shape": [1], "base64": "AAAAAA=="},     # not a float dtype
    {"dtype": "<f4", "shape": [2], "base64": "AAAAAA=="},     # 4 bytes for 2 floats
    {"dtype": "<f4", "shape": [1], "base64": "not base64!"},  # bad characters
    [1.0, 2.0],                                               # not an object
])
def test_decode_array_rejects_malformed_objects(obj):
    from bbzo.blackbox.targets.classifier import decode_array

    with pytest.raises(ValueError):
        decode_array(obj)
