"""Randomized-smoothing certification through the query layer (bbzo.defenses)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from scipy.stats import binomtest, norm

from bbzo.blackbox.protocol import Request, Response
from bbzo.blackbox.query.layer import QueryLayer
from bbzo.blackbox.query.ledger import Ledger
from bbzo.blackbox.serve.classifier import start_classifier_server
from bbzo.blackbox.targets.base import Target
from bbzo.blackbox.targets.spec import load_target
from bbzo.cli.main import cli
from bbzo.defenses import smoothing
from bbzo.defenses.certify import certify_run
from bbzo.defenses.smoothing import (
    ESTIMATE,
    NOISE_BLOCK,
    SELECT,
    Certificate,
    SmoothedClassifier,
    SmoothingSettings,
    block_seed,
    lower_confidence_bound,
    max_certifiable_radius,
    noise,
)
from bbzo.errors import BudgetExceeded, InputError, PermanentError
from bbzo.runs.settings import FieldError

ARCH = textwrap.dedent('''
    import torch
    from torch import nn

    class Constant(nn.Module):
        """Always class ``c`` of 3, whatever the input (1, 4, 4)."""
        def __init__(self, c):
            super().__init__()
            self.c = c
        def forward(self, x):
            out = torch.full((len(x), 3), -10.0)
            out[:, self.c] = 10.0
            return out

    class Brightness(nn.Module):
        """Class 0 for dark images, 1 for bright ones: noisy copies land on both sides."""
        def forward(self, x):
            s = x.flatten(1).mean(1) - 0.5
            return torch.stack([-20 * s, 20 * s, torch.full_like(s, -30.0)], 1)

    def right():
        return Constant(0)

    def wrong():
        return Constant(1)

    def brightness():
        return Brightness()

    def sized():
        """Takes only 1×4×4 images."""
        return nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
''')


@pytest.fixture
def arch(tmp_path: Path) -> str:
    path = tmp_path / "arch.py"
    path.write_text(ARCH)
    return str(path)


@pytest.fixture
def images(tmp_path: Path) -> str:
    """An .npz data set of 1×4×4 images, all labelled 0, brightness spread around 0.5."""
    rng = np.random.default_rng(0)
    level = np.linspace(0.3, 0.7, 30)
    x = np.clip(level[:, None, None] + 0.01 * rng.standard_normal((30, 4, 4)), 0, 1)
    path = tmp_path / "tiny.npz"
    np.savez(path, x=x.astype(np.float32), y=np.zeros(30, dtype=np.int64))
    return str(path)


def settings(**changes) -> SmoothingSettings:
    return SmoothingSettings(**{"sigma": 0.25, "n0": 10, "n": 200, "alpha": 0.001,
                                "batch": 64, **changes})


def records(folder: Path, name: str = "certify.jsonl") -> list[dict]:
    lines = (folder / name).read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]


def test_always_right_certifies_the_largest_radius(arch: str) -> None:
    layer = QueryLayer(load_target(f"torch:{arch}:right", device="cpu"))
    s = settings(n=500)
    cert = SmoothedClassifier(layer, s, seed=3).certify(np.zeros((1, 4, 4), np.float32), 0)
    expected = 0.25 * norm.ppf(0.001 ** (1 / 500))
    assert cert.prediction == 0 and cert.top_count == 500
    assert cert.radius == pytest.approx(expected, rel=1e-12)
    assert max_certifiable_radius(500, 0.001, 0.25) == pytest.approx(expected, rel=1e-12)
    assert max_certifiable_radius(10_000, 0.001, 0.25) == pytest.approx(0.7996, abs=1e-4)


def test_always_wrong_is_never_certified_correct(arch: str, images: str, tmp_path: Path
                                                 ) -> None:
    summary = certify_run(f"torch:{arch}:wrong", out=tmp_path / "run", data=images,
                          split="test", settings=settings(), seed=0)
    rows = records(tmp_path / "run")
    assert rows and all(not r["correct"] and (r["abstain"] or r["prediction"] == 1)
                        for r in rows)
    assert all(v == 0.0 for v in summary["certified_accuracy"].values())
    assert summary["acr"] == 0.0


@pytest.mark.parametrize("k", [0, 1, 57, 150, 199, 200])
def test_lower_bound_is_clopper_pearson(k: int) -> None:
    independent = binomtest(k, 200).proportion_ci(confidence_level=1 - 2 * 0.01,
                                                  method="exact").low
    assert lower_confidence_bound(k, 200, 0.01) == pytest.approx(independent, abs=1e-12)


def test_recorded_radius_follows_the_counts(arch: str, images: str, tmp_path: Path) -> None:
    certify_run(f"torch:{arch}:brightness", out=tmp_path / "run", data=images,
                settings=settings(), seed=1)
    rows = records(tmp_path / "run")
    assert any(r["abstain"] for r in rows) and any(not r["abstain"] for r in rows)
    for r in rows:
        p = binomtest(r["top_count"], 200).proportion_ci(1 - 0.002, method="exact").low
        assert r["abstain"] == (p <= 0.5)
        if not r["abstain"]:
            assert r["radius"] == pytest.approx(0.25 * norm.ppf(p), rel=1e-9)


def test_noise_does_not_depend_on_slicing() -> None:
    whole = noise(5, 2, 1, 0, 1234, (1, 4, 4), 0.5)
    parts = np.concatenate([noise(5, 2, 1, a, min(a + 97, 1234), (1, 4, 4), 0.5)
                            for a in range(0, 1234, 97)])
    assert np.array_equal(whole, parts)
    assert not np.array_equal(whole, noise(5, 3, 1, 0, 1234, (1, 4, 4), 0.5))


def test_noise_is_the_blocks_torch_draws_times_sigma() -> None:
    got = noise(5, 2, ESTIMATE, 0, 700, (1, 4, 4), 0.3)
    expected = torch.cat([torch.randn((NOISE_BLOCK, 1, 4, 4), generator=torch.Generator()
                                      .manual_seed(block_seed(5, 2, ESTIMATE, b))) for b in (0, 1)])
    assert np.array_equal(got, expected[:700].mul_(0.3).numpy())  # as earlier versions drew


def test_every_noisy_input_is_one_query_in_blocks(arch: str, tmp_path: Path) -> None:
    target = load_target(f"torch:{arch}:brightness", device="cpu")
    target.tune = True
    x, s = np.full((1, 4, 4), 0.52, np.float32), settings(n0=10, n=1100, batch=700)
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        first = SmoothedClassifier(QueryLayer(target, ledger=ledger), s, seed=1)
        cert = first.certify(x, 0)
        assert (first.sent, first.cached, cert.queries) == (1110, 0, 1110)
        assert (first.layer.stats.sent, first.layer.stats.queries) == (4, 1110)
        assert ledger.summary().requests == 1 + 3  # blocks: 10 | 512 + 512 + 76
        assert ledger.summary().queries == 1110
        again = SmoothedClassifier(QueryLayer(target, ledger=ledger, budget=1), s, seed=1)
        assert again.certify(x, 0) == cert  # all from the ledger: free
        assert (again.sent, again.cached) == (0, 1110)
        short = SmoothedClassifier(QueryLayer(target, ledger=ledger, budget=100), s, seed=2)
        with pytest.raises(BudgetExceeded, match="needs 1024"):  # 2 blocks per submit
            short.certify(x, 0)
        assert (short.sent, short.budget.queries) == (10, 10)
        assert (short.layer.stats.queries, short.layer.budget.max_queries) == (10, 100)
        assert ledger.summary().requests == 4 + 1
        assert ledger.summary().queries == 1110 + 10


def ledger_rows(path: Path) -> dict[str, bytes]:
    """key -> the stored request bytes of every row of a ledger."""
    with sqlite3.connect(path) as db:
        return dict(db.execute("SELECT key, request_arrays FROM queries"))


def test_recipe_keyed_blocks_hold_the_serial_noise_and_certify_alike(arch: str,
                                                                    tmp_path: Path) -> None:
    target = load_target(f"torch:{arch}:brightness", device="cpu")
    x, s = np.full((1, 4, 4), 0.52, np.float32), settings(n0=10, n=1100, batch=700)
    certs = {}
    for name, pre in (("recipe", None), ("content", lambda t: t)):  # pre: keys by content
        with Ledger(tmp_path / f"{name}.sqlite", store_payloads=True) as ledger:
            certs[name] = SmoothedClassifier(QueryLayer(target, ledger=ledger), s, seed=1,
                                             preprocess=pre).certify(x, 3)
    assert certs["recipe"] == certs["content"]
    recipe, content = ledger_rows(tmp_path / "recipe.sqlite"), \
        ledger_rows(tmp_path / "content.sqlite")
    assert not set(recipe) & set(content)
    expected = [(noise(1, 3, phase, lo, min(num, lo + NOISE_BLOCK), (1, 4, 4), 0.25) + x)
                .tobytes() for phase, num in ((SELECT, 10), (ESTIMATE, 1100))
                for lo in range(0, num, NOISE_BLOCK)]
    assert sorted(recipe.values()) == sorted(content.values()) == sorted(expected)


def test_a_block_key_changes_with_image_sigma_seed_and_index(arch: str, tmp_path: Path) -> None:
    target = load_target(f"torch:{arch}:brightness", device="cpu")
    x = np.full((1, 4, 4), 0.52, np.float32)
    nudged = x.copy()
    nudged[0, 1, 2] = np.nextafter(nudged[0, 1, 2], np.float32(1))
    runs = {"base": (x, 0.25, 1, 0), "image": (nudged, 0.25, 1, 0),
            "sigma": (x, 0.3, 1, 0), "seed": (x, 0.25, 2, 0), "index": (x, 0.25, 1, 1)}
    keys = {}
    for name, (image, sigma, seed, index) in runs.items():
        with Ledger(tmp_path / f"{name}.sqlite") as ledger:
            SmoothedClassifier(QueryLayer(target, ledger=ledger),
                               settings(sigma=sigma, n0=10, n=600), seed=seed).certify(image, index)
        keys[name] = set(ledger_rows(tmp_path / f"{name}.sqlite"))
    assert all(len(k) == 3 for k in keys.values())  # blocks: 10 | 512 + 88
    assert len(set().union(*keys.values())) == 3 * len(runs)
    with Ledger(tmp_path / "base.sqlite") as ledger:  # a rerun: every block from the ledger
        again = SmoothedClassifier(QueryLayer(target, ledger=ledger, budget=1),
                                   settings(n0=10, n=600), seed=1)
        again.certify(x, 0)
    assert (again.sent, again.cached) == (0, 610)


class Waiting(Target):
    """The brightness classifier; its first call waits (up to 10 s) for ``ready``."""

    capabilities = frozenset({"classify"})
    max_batch = 64

    def __init__(self, inner: Target, ready: threading.Event) -> None:
        self.inner, self.ready, self.waited = inner, ready, []
        self.id = inner.id

    def call(self, requests: list[Request]) -> list[Response]:
        if not self.waited:
            self.waited.append(self.ready.wait(10))
        return self.inner.call(requests)


def test_the_next_submits_noise_is_drawn_on_a_worker_while_one_is_classified(
        arch: str, monkeypatch: pytest.MonkeyPatch) -> None:
    drawn, ready, draw = [], threading.Event(), smoothing._draw

    def recording(seed: int, index: int, phase: int, block: int, out):
        drawn.append((phase, block, threading.current_thread().name))
        if phase == ESTIMATE:
            ready.set()  # the second submit's noise
        return draw(seed, index, phase, block, out)

    monkeypatch.setattr(smoothing, "_draw", recording)
    target = Waiting(load_target(f"torch:{arch}:brightness", device="cpu"), ready)
    s = settings(n0=10, n=1100, batch=512)
    cert = SmoothedClassifier(QueryLayer(target), s, seed=1).certify(
        np.full((1, 4, 4), 0.52, np.float32), 3)
    assert target.waited == [True]  # drawn while the selection submit was being classified
    assert [(p, b) for p, b, _ in drawn] == [(SELECT, 0), (ESTIMATE, 0), (ESTIMATE, 1),
                                            (ESTIMATE, 2)]
    assert all(name.startswith("bbzo-noise") for *_, name in drawn)
    assert cert.queries == 1110


def test_a_refused_submit_leaves_no_noise_thread(arch: str) -> None:
    target = load_target(f"torch:{arch}:brightness", device="cpu")
    short = SmoothedClassifier(QueryLayer(target, budget=600), settings(n0=10, n=1100,
                                                                         batch=512), seed=1)
    with pytest.raises(BudgetExceeded):
        short.certify(np.full((1, 4, 4), 0.52, np.float32), 0)
    assert short.sent == 10 + 512
    assert not [t for t in threading.enumerate() if t.name.startswith("bbzo-noise")]


class Overlapping(Target):
    """The brightness classifier; counts its calls in flight. Each call waits (up to 2 s) for
    another to be in flight too, then answers; ``fail_on``: that call (1-based) raises."""

    capabilities = frozenset({"classify"})
    max_batch = 64

    def __init__(self, inner: Target, fail_on: int | None = None) -> None:
        self.inner, self.fail_on, self.id = inner, fail_on, inner.id
        self.calls = self.now = self.most = 0
        self.changed = threading.Condition()

    def call(self, requests: list[Request]) -> list[Response]:
        with self.changed:
            self.calls += 1
            failing = self.calls == self.fail_on
            self.now += 1
            self.most = max(self.most, self.now)
            self.changed.notify_all()
            self.changed.wait_for(lambda: self.now > 1, timeout=2)
        try:
            if failing:
                raise PermanentError("injected failure")
            return self.inner.call(requests)
        finally:
            with self.changed:
                self.now -= 1


def test_a_local_black_box_gets_the_next_submit_while_one_is_answered(arch: str,
                                                                    tmp_path: Path) -> None:
    inner = load_target(f"torch:{arch}:brightness", device="cpu")
    x, s = np.full((1, 4, 4), 0.52, np.float32), settings(n0=10, n=3000, batch=1024)
    target = Overlapping(inner)
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        cert = SmoothedClassifier(QueryLayer(target, ledger=ledger), s, seed=1).certify(x, 0)
        assert ledger.summary().queries == 3010
    assert target.most == 2  # two submits in flight, never more
    assert target.calls == 4  # submits ramp up: 10 | 1024 | 1024 | 952 rows
    assert cert == SmoothedClassifier(QueryLayer(inner), s, seed=1).certify(x, 0)


def test_a_failing_submit_stops_the_pipeline_keeping_what_was_answered(arch: str,
                                                                      tmp_path: Path) -> None:
    inner = load_target(f"torch:{arch}:brightness", device="cpu")
    x, s = np.full((1, 4, 4), 0.52, np.float32), settings(n0=10, n=3000, batch=1024)
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        layer = QueryLayer(Overlapping(inner, fail_on=3), ledger=ledger)
        with pytest.raises(PermanentError, match="injected"):
            SmoothedClassifier(layer, s, seed=1).certify(x, 0)
        answered = ledger.summary().queries
        assert answered >= 10 + 1024  # the submits before the failure are recorded
        assert not [t for t in threading.enumerate() if t.name.startswith("bbzo-noise")]
        again = SmoothedClassifier(QueryLayer(inner, ledger=ledger), s, seed=1)
        assert again.certify(x, 0) == SmoothedClassifier(QueryLayer(inner), s,
                                                         seed=1).certify(x, 0)
        assert (again.cached, again.sent) == (answered, 3010 - answered)


def test_certify_inside_a_running_event_loop_matches_outside(arch: str) -> None:
    target = load_target(f"torch:{arch}:brightness", device="cpu")
    x, s = np.full((1, 4, 4), 0.52, np.float32), settings(n0=10, n=1100, batch=512)

    async def notebook_cell() -> Certificate:  # as in Jupyter, where a loop is running
        return SmoothedClassifier(QueryLayer(target), s, seed=1).certify(x, 0)

    inside = asyncio.run(notebook_cell())
    assert inside == SmoothedClassifier(QueryLayer(target), s, seed=1).certify(x, 0)
    assert inside.queries == 1110


def test_same_certificates_across_batch_sizes(arch: str, images: str, tmp_path: Path) -> None:
    runs = []
    for batch in (7, 64, 500):
        certify_run(f"torch:{arch}:brightness", out=tmp_path / f"b{batch}", data=images,
                    settings=settings(batch=batch), seed=2)
        runs.append(records(tmp_path / f"b{batch}"))
    assert runs[0] == runs[1] == runs[2]


def test_resume_after_budget_stop_is_identical_and_resends_nothing(
        arch: str, images: str, tmp_path: Path) -> None:
    spec, s = f"torch:{arch}:brightness", settings()
    full = certify_run(spec, out=tmp_path / "full", data=images, settings=s, seed=4)
    per_image = s.n0 + s.n
    assert full["queries"] == full["images"] * per_image == full["sent_this_call"]
    with Ledger(tmp_path / "full" / "ledger.sqlite", readonly=True) as ledger:
        assert ledger.summary().queries == full["queries"]  # the shape probe has no ledger
    first = certify_run(spec, out=tmp_path / "cut", data=images, settings=s, seed=4,
                        max_queries=2 * per_image + 50)
    # the third image sends its n0 = 10 selection draws; its first batch of 64 estimation
    # draws would pass the budget and is refused whole
    partial = s.n0
    assert first["stopped"] and first["images"] == 2
    assert first["sent_this_call"] == 2 * per_image + partial
    second = certify_run(spec, out=tmp_path / "cut", data=images, settings=s, seed=4,
                         resume=True)
    assert second["complete"]
    assert records(tmp_path / "cut") == records(tmp_path / "full")
    # the image cut by the budget is answered from the ledger for what was already sent
    assert second["sent_this_call"] == (full["images"] - 2) * per_image - partial
    assert second["cached_this_call"] == partial
    with Ledger(tmp_path / "cut" / "ledger.sqlite", readonly=True) as ledger:
        assert ledger.summary().queries == full["queries"]  # every input sent exactly once


def test_http_black_box_gives_the_local_certificate(arch: str, images: str,
                                                    tmp_path: Path) -> None:
    local = load_target(f"torch:{arch}:brightness", device="cpu")
    certify_run(f"torch:{arch}:brightness", out=tmp_path / "local", data=images,
                settings=settings(), seed=6, limit=6)
    with start_classifier_server(local) as server:
        certify_run(server.url, out=tmp_path / "http", data=images, settings=settings(),
                    seed=6, limit=6)
        assert server.stats()["inputs"] == 6 * 210 + 1  # + the shape probe
    assert records(tmp_path / "http") == records(tmp_path / "local")


@pytest.mark.parametrize("field,value", [("sigma", 0.0), ("sigma", -1.0), ("alpha", 1.0),
                                         ("alpha", 0.0), ("n0", 300), ("n", 0)])
def test_bad_settings_name_the_field(field: str, value: float) -> None:
    with pytest.raises(FieldError) as err:
        settings(**{field: value})
    assert err.value.field == field


@pytest.mark.parametrize("args,needle", [
    (["--sigma", "0"], "--sigma"), (["--n0", "300", "--n", "200"], "--n0"),
    (["--alpha", "1.5"], "--alpha"), (["--data", "nope"], "unknown data set"),
    (["--data", "digits"], "cannot classify images of shape (1, 8, 8)"),
])
def test_cli_bad_input_exits_2_writing_nothing(arch: str, tmp_path: Path, args: list[str],
                                              needle: str) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["defend", "certify", "--model", f"torch:{arch}:sized",
                                      "--out", str(out), *args])
    assert result.exit_code == 2, result.output
    assert needle in result.output and not out.exists()


def test_no_probabilities_is_a_one_line_error(tmp_path: Path, images: str) -> None:
    path = tmp_path / "bad.py"
    path.write_text("import torch\ndef make():\n    return torch.nn.Flatten(0)\n")  # (n*16,)
    with pytest.raises(InputError, match="class probabilities"):
        certify_run(f"torch:{path}:make", out=tmp_path / "run", data=images,
                    settings=settings())
    assert not (tmp_path / "run").exists()


def test_backend_picks_the_forward_and_keeps_the_certificates(arch: str, images: str,
                                                              tmp_path: Path) -> None:
    runs = {}
    for backend in ("torchscript", "onnxruntime"):
        result = CliRunner().invoke(cli, [
            "defend", "certify", "--model", f"torch:{arch}:brightness", "--data", images,
            "--n0", "10", "--n", "100", "--limit", "4", "--backend", backend,
            "--out", str(tmp_path / backend)])
        assert result.exit_code == 0, result.output
        forward = json.loads((tmp_path / backend / "summary.json").read_text())["forward"]
        assert forward == {"black_box": backend, "preprocess": None}
        runs[backend] = records(tmp_path / backend)
    assert runs["torchscript"] == runs["onnxruntime"]
    with pytest.raises(InputError, match="backend must be one of"):
        certify_run(f"torch:{arch}:brightness", out=tmp_path / "bad", data=images,
                    settings=settings(), backend="tvm")
    assert not (tmp_path / "bad").exists()


def test_cli_certify_then_compare(arch: str, images: str, tmp_path: Path) -> None:
    runner = CliRunner()
    for name in ("right", "brightness"):
        result = runner.invoke(cli, ["defend", "certify", "--model", f"torch:{arch}:{name}",
                                     "--data", images, "--n0", "10", "--n", "100", "--limit",
                                     "4", "--out", str(tmp_path / name), "--json"])
        assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "right" / "summary.json").read_text())
    assert summary["certified_accuracy"]["0.25"] == 1.0
    assert summary["queries"] == 4 * 110
    assert (tmp_path / "right" / "certified.png").stat().st_size > 0
    forward = json.loads((tmp_path / "brightness" / "summary.json").read_text())["forward"]
    assert forward == {"black_box": "onnxruntime", "preprocess": None}  # tuned, ONNX Runtime
    result = runner.invoke(cli, ["defend", "compare", str(tmp_path / "right"),
                                 str(tmp_path / "brightness"), "--plot",
                                 str(tmp_path / "c.png"), "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["run"] for r in rows] == ["right", "brightness"]
    assert (tmp_path / "c.png").is_file()


def test_resume_after_sigkill_gives_the_same_certificates(arch: str, images: str,
                                                          tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    spec, s = f"torch:{arch}:brightness", settings(n=3000, batch=100)
    out = tmp_path / "killed"
    code = (f"from bbzo.defenses.certify import certify_run\n"
            f"from bbzo.defenses.smoothing import SmoothingSettings\n"
            f"certify_run({spec!r}, out={str(out)!r}, data={images!r}, seed=8, "
            f"settings=SmoothingSettings(**{s.to_dict()!r}))\n")
    child = subprocess.Popen([sys.executable, "-c", code], cwd=os.getcwd())
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and child.poll() is None:
            done = out / "certify.jsonl"
            if done.is_file() and done.read_text().count("\n") >= 1:
                break
            time.sleep(0.05)
        assert child.poll() is None, "the run ended before it could be killed"
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert not (out / "summary.json").exists()
    summary = certify_run(spec, out=out, data=images, settings=s, seed=8, resume=True)
    certify_run(spec, out=tmp_path / "whole", data=images, settings=s, seed=8)
    assert summary["complete"] and records(out) == records(tmp_path / "whole")
