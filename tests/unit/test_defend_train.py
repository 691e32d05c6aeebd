"""Defense training (bbzo.defenses.training): ZO queries per step, resume, FO guard."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bbzo.blackbox.query.layer import QueryLayer
from bbzo.blackbox.targets.classifier import TorchClassifier, save_classifier
from bbzo.defenses.defense import load_defense
from bbzo.defenses.models import small_cnn
from bbzo.defenses.training import (
    StabilityLoss,
    TrainSettings,
    epoch_bound,
    queries_per_image,
    train_defense,
)
from bbzo.errors import InputError
from bbzo.runs.settings import FieldError

TINY = {"epochs": 2, "batch": 16, "depth": 2, "width": 4, "latent": 4, "ae_epochs": 1,
        "denoiser_epochs": 0, "train_limit": 32, "val_limit": 16, "q": 3}


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An untrained (seeded) small CNN for 1×8×8 digits, saved as a black-box folder."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("clf")
    kwargs = {"channels": 1, "size": 8, "classes": 10, "width": 4}
    save_classifier(small_cnn(**kwargs), folder, "bbzo.defenses.models:small_cnn", kwargs,
                    outputs="logits")
    return str(folder)


def test_queries_per_image_per_step() -> None:
    assert queries_per_image(TrainSettings(estimator="rge", q=20), 48) == 21
    assert queries_per_image(TrainSettings(estimator="cge"), 48) == 49
    assert queries_per_image(TrainSettings(method="fo-ds"), 48) == 0


def test_zo_training_sends_exactly_the_stated_queries(classifier: str, tmp_path: Path) -> None:
    for estimator, dim_queries in (("rge", 3 + 1), ("cge", 4 + 1)):
        reuse = str(tmp_path / "rge") if estimator == "cge" else None
        s = TrainSettings(method="zo-ae-ds", estimator=estimator, autoencoder=reuse,
                          **{**TINY, "epochs": 1})
        summary = train_defense(classifier, out=tmp_path / estimator, data="digits",
                                settings=s, seed=0)
        # 32 images: one clean-label query each + (q + 1) or (d + 1) per image per step
        assert summary["queries_per_image_per_step"] == dim_queries
        assert summary["training_queries"] == 32 * (1 + dim_queries)
        # + the validation draws: before training and after the epoch
        assert summary["total_queries"] == summary["training_queries"] + 2 * 16
    # the CGE run started from the RGE run's pre-trained autoencoder; its decoder stayed frozen
    pretrained = torch.load(tmp_path / "rge" / "pretrained_autoencoder.pt", weights_only=True)
    trained = torch.load(tmp_path / "cge" / "autoencoder.pt", weights_only=True)
    decoder = [k for k in pretrained if k.startswith("decoder")]
    assert decoder and all(torch.equal(pretrained[k], trained[k]) for k in decoder)
    assert not all(torch.equal(pretrained[k], trained[k]) for k in pretrained
                   if k.startswith("encoder"))


def test_stability_loss_scores_each_probe_against_its_rows_label(classifier: str) -> None:
    target = TorchClassifier(small_cnn(1, 8, 10, 4), "t", outputs="logits", device="cpu")
    layer = QueryLayer(target)
    loss = StabilityLoss(layer, lambda z: z.reshape(len(z), 1, 8, 8))
    anchor = torch.rand(2, 64)
    loss.anchor, loss.labels = anchor, torch.tensor([3, 7])
    probes = torch.cat([anchor[1:] + 1e-3, anchor[:1] - 1e-3])
    probs = target.predict(probes.reshape(2, 1, 8, 8).numpy())
    expected = -np.log([probs[0, 7], probs[1, 3]])
    assert np.allclose(loss(probes).numpy(), expected, rtol=1e-6)


def test_resumed_training_continues_from_the_checkpoint(classifier: str, tmp_path: Path
                                                        ) -> None:
    s = TrainSettings(method="zo-ds", **TINY)
    train_defense(classifier, out=tmp_path / "whole", data="digits", settings=s, seed=1)
    # the same run stopped after epoch 1, then resumed: epoch 2 starts from the checkpoint
    train_defense(classifier, out=tmp_path / "cut", data="digits",
                  settings=TrainSettings(method="zo-ds", **{**TINY, "epochs": 1}), seed=1)
    config = json.loads((tmp_path / "cut" / "config.json").read_text())
    config["options"]["epochs"] = 2  # what a resume with the full settings would find
    (tmp_path / "cut" / "config.json").write_text(json.dumps(config))
    resumed = train_defense(classifier, out=tmp_path / "cut", data="digits", settings=s,
                            seed=1, resume=True)
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    whole = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=False)
    cut = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)
    for name, value in whole["denoiser"].items():
        assert torch.allclose(value.float(), cut["denoiser"][name].float(), atol=1e-6), name
    assert load_defense(tmp_path / "cut").method == "zo-ds"


def test_training_budget_stops_before_an_epoch_it_cannot_cover_and_resumes(
        classifier: str, tmp_path: Path) -> None:
    s = TrainSettings(method="zo-ds", **TINY)  # zo-ds on 8×8: d = 64, RGE q = 3
    bound = epoch_bound(s, 64, 32)
    assert bound == 32 * (1 + 3 + 1) + 16
    whole = train_defense(classifier, out=tmp_path / "whole", data="digits", settings=s, seed=1)
    assert whole["complete"] and whole["stopped"] is None
    # 16 (first validation) + 160 (epoch 1) + 16 (its validation) = 192 sent; 108 left < bound
    cut = train_defense(classifier, out=tmp_path / "cut", data="digits", settings=s, seed=1,
                        max_queries=300)
    assert cut["sent_this_call"] == 192 and cut["epochs_done"] == 1
    assert not cut["complete"] and cut["stopped"].startswith("budget: 108 of 300 queries left")
    assert [json.loads(line)["epoch"] for line in
            (tmp_path / "cut" / "history.jsonl").read_text().splitlines()] == [1]
    # a resume may change the budget; epoch 2's clean labels come from the ledger
    resumed = train_defense(classifier, out=tmp_path / "cut", data="digits", settings=s, seed=1,
                            resume=True, max_queries=bound)
    assert resumed["complete"] and resumed["sent_this_call"] == 32 * 4 + 16 <= bound
    assert resumed["training_queries"] == whole["training_queries"]
    assert resumed["total_queries"] == whole["total_queries"]
    a = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=False)["denoiser"]
    b = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)["denoiser"]
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)


@pytest.mark.parametrize("budget, words", [(8, "does not cover one validation"),
                                           (0, "positive integer"), (True, "positive integer")])
def test_training_budget_is_checked_before_anything_is_written(
        classifier: str, tmp_path: Path, budget: object, words: str) -> None:
    with pytest.raises(InputError, match=words):
        train_defense(classifier, out=tmp_path / "run", data="digits", max_queries=budget,
                      settings=TrainSettings(method="zo-ds", **TINY))
    assert not (tmp_path / "run").exists()


def test_first_order_needs_a_local_classifier(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="white-box baseline"):
        train_defense("http://127.0.0.1:9/classify", out=tmp_path / "run", data="digits",
                      settings=TrainSettings(method="fo-ds", **TINY))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("field,value", [("method", "ds"), ("estimator", "x"), ("q", 0),
                                         ("sigma", 0.0), ("mu", -1.0)])
def test_bad_training_settings_name_the_field(field: str, value: object) -> None:
    with pytest.raises(FieldError) as err:
        TrainSettings(**{field: value})
    assert err.value.field == field


def test_compare_reports_each_defenses_training_queries(classifier: str, tmp_path: Path) -> None:
    from bbzo.defenses.certify import certify_run, compare
    from bbzo.defenses.smoothing import SmoothingSettings

    s = TrainSettings(method="zo-ds", estimator="rge", **{**TINY, "epochs": 1})
    trained = train_defense(classifier, out=tmp_path / "zo", data="digits", settings=s, seed=0)
    smoothing = SmoothingSettings(sigma=0.25, n0=10, n=50, alpha=0.01)
    for name, model in (("defended", tmp_path / "zo"), ("plain", classifier)):
        certify_run(str(model), out=tmp_path / name, data="digits", settings=smoothing,
                    limit=2, seed=0)
    defended, plain = compare([tmp_path / "defended", tmp_path / "plain"])
    assert defended["method"] == "zo-ds rge"
    assert defended["train_queries_per_image_per_step"] == 3 + 1
    assert defended["training_queries"] == trained["training_queries"] == 32 * (1 + 3 + 1)
    assert plain["method"] == plain["training_queries"] == "-"


@pytest.mark.parametrize("latent", [None, 8])
def test_fast_preprocess_traces_and_matches_the_modules(latent: int | None) -> None:
    from bbzo.blackbox.targets.tuned import TUNED_TOL, tuned_forward
    from bbzo.defenses.defense import Defense, build_networks

    torch.manual_seed(0)
    denoiser, autoencoder = build_networks((1, 8, 8), depth=2, width=4, latent=latent)
    defense = Defense("zo-ae-ds" if latent else "zo-ds", "clf", 0.25, denoiser,
                      autoencoder).eval()
    pipeline = torch.nn.Sequential(*defense.modules())
    assert tuned_forward(pipeline, torch.rand(16, 1, 8, 8)) is not None  # no fallback
    fast = defense.fast_preprocess(chunk=16)
    with torch.no_grad():
        for rows in (37, 16, 5):  # several chunks, a padded last chunk, one short chunk
            x = torch.rand(rows, 1, 8, 8)
            got, want = fast(x), defense.preprocess(x)
            assert got.shape == want.shape
            assert torch.allclose(got, want, atol=TUNED_TOL, rtol=TUNED_TOL)


def test_cli_train_reports_a_budget_stop(classifier: str, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from bbzo.cli.main import cli

    out = tmp_path / "run"
    args = ["defend", "train", "--blackbox", classifier, "--data", "digits", "--method",
            "zo-ds", "--epochs", "2", "--batch", "16", "--depth", "2", "--width", "4",
            "--denoiser-epochs", "0", "--train-limit", "32", "--val-limit", "16", "--q", "3",
            "--seed", "1", "--out", str(out)]
    result = CliRunner().invoke(cli, [*args, "--max-queries", "300"])
    assert result.exit_code == 0, result.output
    assert "stopped after epoch 1 of 2: budget" in " ".join(result.output.split())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs_done"] == 1 and summary["sent_this_call"] == 192
    bad = CliRunner().invoke(cli, [*args[:-1], str(tmp_path / "other"), "--max-queries", "8"])
    assert bad.exit_code == 2 and "does not cover one validation" in bad.output
    assert not (tmp_path / "other").exists()
