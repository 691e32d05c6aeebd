"""Evaluation of Private-GSD runs: ML efficacy, ``evaluate_run`` errors, the ε sweep (resumable,
plotted) and ``bbzo synth eval`` / ``bbzo synth sweep`` through click."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

import bbzo.privacy.gsd.sweep as sweep_module
from bbzo.cli.main import cli
from bbzo.errors import InputError
from bbzo.privacy.gsd.evaluate import ErrorMeter, evaluate_run, marginal_errors, ml_efficacy
from bbzo.privacy.gsd.sweep import PLOT, RECORDS, SUMMARY, run_sweep, sub_run_name

SIZES = np.array([4, 3, 2, 2])  # columns a, b, c, y
DOMAIN = {"a": 4, "b": 3, "c": 2, "y": 2}
FAST = {"rows": 40, "generations": 30}


def planted(rows: int, seed: int) -> np.ndarray:
    """Codes (rows, 4) whose last column y = a mod 2: a deterministic function of a."""
    rng = np.random.default_rng(seed)
    a, b, c = rng.integers(0, 4, rows), rng.integers(0, 3, rows), rng.integers(0, 2, rows)
    return np.stack([a, b, c, a % 2], axis=1)


def write_csv(path, codes, header=("a", "b", "c", "y")):
    path.write_text(",".join(header) + "\n"
                    + "".join(",".join(map(str, r)) + "\n" for r in codes))
    return path


@pytest.fixture
def files(tmp_path):
    data = write_csv(tmp_path / "data.csv", planted(150, 0))
    domain = tmp_path / "domain.json"
    domain.write_text(json.dumps(DOMAIN))
    return tmp_path, data, domain


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], prog_name="bbzo")


def test_ml_efficacy_learns_a_planted_rule_from_real_and_faithful_synthetic_rows():
    real = planted(400, 0)
    faithful = planted(300, 1)
    result = ml_efficacy(SIZES, real, faithful, 3, seed=0)
    assert result["real"]["accuracy"] >= 0.99
    assert result["synthetic"]["balanced_accuracy"] >= 0.99
    assert result["ratio"]["f1_macro"] == pytest.approx(
        result["synthetic"]["f1_macro"] / result["real"]["f1_macro"])
    assert result["test_rows"] == 120 and result["train_rows"] == {"synthetic": 300, "real": 280}


def test_ml_efficacy_of_rows_that_lost_the_rule_is_near_chance():
    real = planted(400, 0)
    broken = planted(400, 1)
    broken[:, 3] = np.random.default_rng(2).integers(0, 2, 400)  # y independent of a
    result = ml_efficacy(SIZES, real, broken, 3, seed=0)
    assert result["synthetic"]["balanced_accuracy"] < 0.7
    assert result["ratio"]["balanced_accuracy"] < 0.75


def test_ml_efficacy_with_one_target_class_in_the_synthetic_rows_predicts_it():
    real = planted(200, 0)
    one_class = planted(50, 1)
    one_class[:, 3] = 1
    result = ml_efficacy(SIZES, real, one_class, 3, seed=0)
    assert result["synthetic"]["balanced_accuracy"] == pytest.approx(0.5)


@pytest.mark.parametrize("target, fraction, match", [(4, 0.3, "target column index 4"),
                                                     (3, 1.0, "test_fraction")])
def test_ml_efficacy_refuses_bad_arguments(target, fraction, match):
    with pytest.raises(InputError, match=match):
        ml_efficacy(SIZES, planted(20, 0), planted(20, 1), target, test_fraction=fraction)


def test_error_meter_matches_marginal_errors_and_is_zero_on_the_data_itself():
    real, other = planted(200, 0), planted(90, 1)
    classes = ("1way", "2way", "3way", "prefix")
    meter = ErrorMeter(SIZES, real, classes)
    assert meter(other) == marginal_errors(SIZES, real, other, classes)
    assert meter(other)["2way"]["max"] > 0
    assert all(e["max"] == 0 for e in meter(real).values())


def fit_run(data, domain, out):
    result = invoke("synth", "fit", "--data", data, "--domain", domain, "--epsilon", 1.0,
                    "--out", out, "--rows", 40, "--generations", 30)
    assert result.exit_code == 0, result.output
    return out


def test_evaluate_run_reports_efficacy_and_errors_marked_non_private(files):
    tmp, data, domain = files
    run = fit_run(data, domain, tmp / "run")
    result = evaluate_run(run, data, "y", seed=1)
    assert result["non_private"] is True
    assert set(result["marginal_errors"]) == {"2way", "3way"}
    assert 0 <= result["marginal_errors"]["3way"]["max"] <= 1
    assert result["ml_efficacy"]["real"]["accuracy"] >= 0.99


def test_evaluate_run_errors_name_what_is_wrong(files):
    tmp, data, domain = files
    with pytest.raises(InputError, match="no synthetic.csv"):
        evaluate_run(tmp / "missing", data, "y")
    run = fit_run(data, domain, tmp / "run")
    with pytest.raises(InputError, match="target column 'income'"):
        evaluate_run(run, data, "income")
    (run / "config.json").unlink()
    with pytest.raises(InputError, match="--domain"):
        evaluate_run(run, data, "y")
    with pytest.raises(InputError, match="lacks the domain's columns"):
        evaluate_run(run, {"a": [0], "b": [0], "c": [0]}, "a", domain=domain)


def test_sweep_writes_summary_and_plot_and_skips_finished_sub_runs(files, monkeypatch):
    tmp, data, domain = files
    out = tmp / "sweep"
    first = run_sweep(data, domain, [1.0, 0.5], [0, 1], out, fit_options=FAST)
    assert [r["epsilon"] for r in first["epsilons"]] == [0.5, 1.0]
    assert all(r["seeds"] == [0, 1] for r in first["epsilons"])
    assert (out / PLOT).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / SUMMARY).read_text()) == json.loads(json.dumps(first))
    records = [json.loads(line) for line in (out / RECORDS).read_text().splitlines()]
    assert len(records) == 4
    maxima = [r["errors"]["2way"]["max"] for r in records if r["epsilon"] == 0.5]
    assert first["epsilons"][0]["2way_max"]["mean"] == pytest.approx(np.mean(maxima))
    assert first["epsilons"][0]["2way_max"]["sd"] == pytest.approx(np.std(maxima))

    fits = []
    real_fit = sweep_module.fit_to_run
    monkeypatch.setattr(sweep_module, "fit_to_run",
                        lambda gsd, *a, **k: fits.append((gsd.epsilon, gsd.seed))
                        or real_fit(gsd, *a, **k))
    (out / RECORDS).write_text("\n".join(json.dumps(r) for r in records[:2]) + "\n")
    (out / sub_run_name(1.0, 1) / "summary.json").unlink()  # that fit did not finish
    again = run_sweep(data, domain, [1.0, 0.5], [0, 1], out, fit_options=FAST)
    assert fits == [(1.0, 1)]
    assert len((out / RECORDS).read_text().splitlines()) == 4
    assert again["epsilons"][0] == first["epsilons"][0]


def test_sweep_refuses_bad_input_before_writing(files):
    tmp, data, domain = files
    out = tmp / "sweep"
    with pytest.raises(InputError, match="epsilon"):
        run_sweep(data, domain, [0.0], [0], out, fit_options=FAST)
    with pytest.raises(InputError, match="unknown query class"):
        run_sweep(data, domain, [1.0], [0], out, fit_options={**FAST, "queries": "5way"})
    with pytest.raises(InputError, match="fit_options must not set 'seed'"):
        run_sweep(data, domain, [1.0], [0], out, fit_options={"seed": 3})
    assert not out.exists()


def test_cli_eval_writes_eval_json_and_fails_in_one_line(files):
    tmp, data, domain = files
    run = fit_run(data, domain, tmp / "run")
    result = invoke("synth", "eval", run, "--data", data, "--target", "y")
    assert result.exit_code == 0, result.output
    assert "NOT private" in result.output and "train on synthetic" in result.output
    saved = json.loads((run / "eval.json").read_text())
    assert saved["target"] == "y" and saved["non_private"] is True
    bad = invoke("synth", "eval", run, "--data", data, "--target", "nope")
    assert bad.exit_code == 2 and "target column 'nope'" in bad.output
    assert len(bad.output.strip().splitlines()) == 1
    missing = invoke("synth", "eval", tmp / "nowhere", "--data", data, "--target", "y")
    assert missing.exit_code == 2 and "no synthetic.csv" in missing.output
    no_data = invoke("synth", "eval", run, "--data", tmp / "absent.csv", "--target", "y")
    assert no_data.exit_code == 2 and "cannot read the data file" in no_data.output


def test_cli_sweep_prints_the_table_and_resumes(files):
    tmp, data, domain = files
    out = tmp / "sweep"
    args = ("synth", "sweep", "--data", data, "--domain", domain, "--epsilons", "0.5,1",
            "--seeds", "0", "--rows", 40, "--generations", 30, "--out", out)
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert "2way max" in result.output and (out / PLOT).is_file()
    assert {p.name for p in out.iterdir()} >= {sub_run_name(0.5, 0), sub_run_name(1.0, 0)}
    again = invoke(*args, "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.output) == json.loads((out / SUMMARY).read_text())
    bad = invoke("synth", "sweep", "--data", data, "--domain", domain, "--epsilons", "a,b",
                 "--out", tmp / "other")
    assert bad.exit_code == 2 and "comma-separated numbers" in bad.output
