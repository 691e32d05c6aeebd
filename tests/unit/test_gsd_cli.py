"""``bbzo synth fit``: the run folder, exit codes for bad input (nothing written), and that
nothing derived from the private data reaches stdout or the run folder without --evaluate."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

import bbzo.privacy.gsd.synthesizer as synthesizer
from bbzo.cli.main import cli
from bbzo.runs import MANIFEST

DOMAIN = {"a": 3, "b": 2, "c": 4}
FILES = {MANIFEST, "config.json", "privacy_ledger.jsonl", "measurements.npz", "checkpoint.pkl",
         "synthetic.csv", "summary.json"}
FAST = ["--rows", "50", "--generations", "60"]


def write_table(path, rows, header=("c", "a", "b")):
    path.write_text(",".join(header) + "\n" + "".join(",".join(map(str, r)) + "\n"
                                                      for r in rows))
    return path


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    rows = np.stack([rng.integers(0, 4, 120), rng.integers(0, 3, 120), rng.integers(0, 2, 120)],
                    axis=1)
    data = write_table(tmp_path / "data.csv", rows)
    domain = tmp_path / "domain.json"
    domain.write_text(json.dumps(DOMAIN))
    return tmp_path, data, domain


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], prog_name="bbzo")


def test_fit_writes_the_run_folder(files):
    tmp, data, domain = files
    out = tmp / "run"
    result = invoke("synth", "fit", "--data", data, "--domain", domain, "--epsilon", 1.0,
                    "--out", out, "--seed", 3, "--evaluate", "--json", *FAST)
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == FILES
    summary = json.loads((out / "summary.json").read_text())
    assert summary["delta"] == pytest.approx(1 / 120 ** 2)
    ledger = [json.loads(line) for line in (out / "privacy_ledger.jsonl").read_text().splitlines()]
    assert len(ledger) == 3 and {r["mechanism"] for r in ledger} == {"gaussian"}
    assert sum(r["rho"] for r in ledger) == pytest.approx(summary["rho"])
    assert summary["evaluation"]["non_private"] is True
    assert 0 <= summary["evaluation"]["2way"]["max"] <= 1
    lines = (out / "synthetic.csv").read_text().splitlines()
    assert lines[0] == "c,a,b" and len(lines) == 51


def test_resume_of_a_finished_fit_charges_nothing_more(files):
    tmp, data, domain = files
    out = tmp / "run"
    args = ["synth", "fit", "--data", data, "--domain", domain, "--epsilon", 1.0, "--mode",
            "hybrid", "--out", out, "--seed", 3, "--json", *FAST]
    assert invoke(*args).exit_code == 0
    ledger = (out / "privacy_ledger.jsonl").read_text()
    synthetic = (out / "synthetic.csv").read_bytes()
    result = invoke(*args, "--resume")
    assert result.exit_code == 0, result.output
    assert (out / "privacy_ledger.jsonl").read_text() == ledger
    assert (out / "synthetic.csv").read_bytes() == synthetic
    changed = invoke(*[a if a != 1.0 else 2.0 for a in args], "--resume")
    assert changed.exit_code == 2 and "other settings" in changed.stderr


@pytest.mark.parametrize("mode", ["oneshot", "adaptive", "hybrid"])
def test_outputs_depend_on_the_data_only_through_the_mechanisms(files, monkeypatch, mode):
    """With the mechanisms replaced by data-blind stand-ins (fixed noise, fixed choice), two
    different private tables of one size must give byte-identical outputs: nothing else
    derived from the data is printed or written without --evaluate."""
    tmp, first, domain = files
    second = write_table(tmp / "other.csv", [[3, 2, 1]] * 119 + [[0, 0, 0]])

    def blind_measure(answers, *, sensitivity, rho, ledger, workload, rng):
        ledger.charge("gaussian", workload, rho, 0.1)
        return np.full(np.shape(answers), 0.25)

    def blind_top_k(scores, k, *, sensitivity, rho, ledger, workload, rng):
        ledger.charge("exponential", workload, rho)
        return np.arange(k)

    monkeypatch.setattr(synthesizer, "gaussian_measure", blind_measure)
    monkeypatch.setattr(synthesizer, "gumbel_top_k", blind_top_k)
    seen = []
    for i, data in enumerate([first, second]):
        out = tmp / f"run{i}"
        result = invoke("synth", "fit", "--data", data, "--domain", domain, "--epsilon", 0.5,
                        "--mode", mode, "--out", out, "--json", *FAST)
        assert result.exit_code == 0, result.output
        assert {p.name for p in out.iterdir()} == FILES
        stdout = json.loads(result.stdout)
        summary = json.loads((out / "summary.json").read_text())
        for record in (stdout, summary):
            assert "evaluation" not in record
            record.pop("seconds")
        assert stdout == summary
        seen.append((summary, (out / "synthetic.csv").read_bytes(),
                     (out / "privacy_ledger.jsonl").read_bytes(), result.stderr))
    assert seen[0] == seen[1]


@pytest.mark.parametrize("change, message", [
    ({"domain": {"a": 3, "b": 2}}, "does not name"),
    ({"domain": {"a": 3, "b": 2, "c": 2}}, "column 'c', data row"),
    ({"args": ["--epsilon", "0"]}, "epsilon"),
    ({"args": ["--delta", "1.0"]}, "delta"),
    ({"args": ["--delta", "0"]}, "delta"),
    ({"args": ["--queries", "2way,4way"]}, "unknown query class"),
    ({"rows": []}, "no rows"),
    ({"domain": "not json"}, "not valid JSON"),
    ({"args": ["--mode", "adaptive", "--rounds", "3", "--top-k", "2"]}, "6 workloads"),
    ({"args": ["--queries", "range"]}, "numeric column"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(files, change, message):
    tmp, data, domain = files
    if "domain" in change:
        value = change["domain"]
        domain.write_text(value if isinstance(value, str) else json.dumps(value))
    if "rows" in change:
        write_table(data, change["rows"])
    out = tmp / "run"
    extra = change.get("args", [])
    epsilon = [] if "--epsilon" in extra else ["--epsilon", 1.0]
    result = invoke("synth", "fit", "--data", data, "--domain", domain, *epsilon, "--out", out,
                    *FAST, *extra)
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert not out.exists()
