"""The random feasible-rephrasing baseline: it proposes from the original only (the proposals it
asks for do not depend on the objective), scores no more texts than the SECA run it matches,
and writes the same files and fields as SECA."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner
from seca_support import QUESTION, ScriptedProposer, save_roomy_lm, save_tiny_embedder

from bbzo.attacks.seca.baseline import MATCHED_STEPS, parent_selection
from bbzo.attacks.seca.constraints import Verdict
from bbzo.attacks.seca.objective import OptionObjective
from bbzo.attacks.seca.questions import Question
from bbzo.attacks.seca.run import SecaConfig, run_seca
from bbzo.attacks.seca.search import seca_search
from bbzo.blackbox.query.layer import QueryLayer
from bbzo.blackbox.targets.hf import HFTarget
from bbzo.cli.main import cli
from bbzo.errors import InputError


class RandomObjective:
    """Seeded random option scores that keep the correct option (0) on top, so no search
    stops early; counts the texts it scored."""

    name = "random"
    estimate = False

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.scored = 0

    def evaluate(self, question: Question, texts) -> np.ndarray:
        self.scored += len(texts)
        raw = self.rng.uniform(0.0, 1.0, (len(texts), len(question.choices)))
        raw[:, question.answer] += 2.0
        return raw - np.log(np.exp(raw).sum(axis=1, keepdims=True))


class PassAll:
    name = "pass-all"

    def check(self, question, texts):
        return [[Verdict("pass-all", "equivalence", True, 1.0, "passes")] for _ in texts]


def rewrite(step: int, i: int, j: int, parent: str) -> str | None:
    """A proposal that names its parent, so a changed parent changes the proposals; the first
    proposal of every step is unusable."""
    return None if (i, j) == (0, 0) else f"{parent} ~{step}.{i}.{j}"


def search(objective, *, from_original, iterations=4, max_scored=None):
    proposer = ScriptedProposer(rewrite)
    select = parent_selection("random" if from_original else None)
    result = seca_search(QUESTION, objective=objective, proposer=proposer, checks=PassAll(),
                         target=1, iterations=iterations, select=select,
                         max_scored=max_scored, original_logp=np.log([0.97, 0.01, 0.01, 0.01]))
    return proposer.calls, result


def test_baseline_proposals_do_not_depend_on_the_objective():
    calls = {seed: search(RandomObjective(seed), from_original=True)[0] for seed in (1, 2, 3)}
    assert calls[1] == calls[2] == calls[3]
    assert len(calls[1]) == 4
    assert all(c["parents"] == [QUESTION.question] * 3 for c in calls[1])
    # SECA's own proposals do follow the objective (its parents are the best rewrites so far).
    guided = {seed: search(RandomObjective(seed), from_original=False)[0] for seed in (1, 2)}
    assert guided[1] != guided[2]
    assert any(c["parents"] != [QUESTION.question] * 3 for c in guided[1])


@pytest.mark.parametrize("budget", [0, 1, 8, 11, 32, 100])
def test_max_scored_caps_the_texts_scored(budget):
    objective = RandomObjective(0)
    calls, result = search(objective, from_original=True, max_scored=budget)
    usable_per_step = 8  # 9 proposals, one unusable
    assert objective.scored == min(budget, 4 * usable_per_step)
    assert result.proposals - result.unusable - result.unscored == objective.scored
    # A step is proposed only while budget is left, so unscored proposals come from the last.
    assert len(calls) == min(4, -(-budget // usable_per_step))
    assert result.unscored == len(calls) * usable_per_step - objective.scored


RAW = [("q1", "What is the capital of France?", ["Paris", "Berlin", "Rome", "Madrid"], "geo"),
       ("q2", "Which planet is red?", ["Mars", "Venus", "Earth", "Saturn"], "space"),
       ("q3", "How many legs has a spider?", ["eight", "six", "four", "ten"], "biology")]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A SECA run and the random baseline matched to it, on tiny models; q2 is ineligible."""
    root = tmp_path_factory.mktemp("baseline")
    lm = save_roomy_lm(root / "lm")
    embedder = save_tiny_embedder(root / "emb")
    objective = OptionObjective(QueryLayer(HFTarget(str(lm), device="cpu")))
    lines = []
    for qid, text, choices, subject in RAW:
        logp = objective.evaluate(Question(qid, text, tuple(choices), 0, subject), [text])[0]
        answer = int(np.argmin(logp)) if qid == "q2" else int(np.argmax(logp))
        lines.append(json.dumps({"id": qid, "question": text, "choices": choices,
                                 "answer": answer, "subject": subject}))
    (root / "q.jsonl").write_text("\n".join(lines) + "\n")
    config = SecaConfig(questions=str(root / "q.jsonl"), target=f"hf:{lm}", proposer=f"hf:{lm}",
                        reference=f"hf:{lm}", embedder=f"embed:{embedder}", iterations=2,
                        similarity=0.05, coherence_ratio=1e6, shuffle=False,
                        proposer_max_tokens=8, device="cpu", proposer_mode="llm", lexical=False)
    seca = run_seca(config, out=root / "seca")
    baseline = run_seca(replace(config, baseline="random", match=str(root / "seca")),
                        out=root / "random")
    return config, root, seca, baseline


def records(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]


def test_matched_baseline_spends_the_same_and_compares_field_by_field(runs):
    _, root, seca, baseline = runs
    assert (seca["method"], baseline["method"]) == ("seca", "random")
    assert set(seca) == set(baseline)
    mine, theirs = records(root / "random"), records(root / "seca")
    assert [r["id"] for r in mine] == [r["id"] for r in theirs]
    for r, s in zip(mine, theirs, strict=True):
        assert set(r) == set(s)
        assert (r["eligible"], r["target_choice"]) == (s["eligible"], s["target_choice"])
        if not r["eligible"]:
            continue
        scored = s["proposals"] - s["unusable_proposals"] - s["unscored"]
        assert r["scored_budget"] == scored > 0
        assert r["proposals"] - r["unusable_proposals"] - r["unscored"] == scored
        assert r["target_requests"] == s["target_requests"]
    assert baseline["mean_target_queries_per_question"] == seca["mean_target_queries_per_question"]


def scored(record: dict) -> int:
    return record["proposals"] - record["unusable_proposals"] - record["unscored"]


def test_matched_baseline_spends_the_budget_when_fewer_proposals_are_usable(runs, tmp_path):
    """One usable proposal per parent and step (SECA's run had up to three): the baseline takes
    more steps (at most ``MATCHED_STEPS`` x iterations) and still scores exactly SECA's texts."""
    config, root, _, _ = runs
    sparse = ScriptedProposer(lambda step, i, j, parent: f"{parent} ~{step}.{i}" if j == 0
                              else None)
    run_seca(replace(config, baseline="random", match=str(root / "seca")), out=tmp_path / "r",
             proposer=sparse)
    pairs = [(r, s) for r, s in zip(records(tmp_path / "r"), records(root / "seca"), strict=True)
             if r["eligible"]]
    assert pairs and any(r["steps"] > config.iterations for r, _ in pairs)
    for r, s in pairs:
        assert scored(r) == scored(s) if not r["stopped_early"] else scored(r) <= scored(s)
        assert r["steps"] <= MATCHED_STEPS * config.iterations


def test_matched_baseline_asks_the_proposer_about_the_original_only(runs):
    config, root, _, _ = runs
    originals = {text for _, text, _, _ in RAW}
    with sqlite3.connect(root / "random" / "ledger.sqlite") as db:
        prompts = [json.loads(row[0])["payload"]["prompt"] for row in
                   db.execute("SELECT request FROM queries WHERE kind = 'generate'")]
    assert len(prompts) == sum(r["proposals"] for r in records(root / "random"))
    # The completion prompt ends with the parent's JSON line left open for the rewrite.
    parents = {json.loads(p.splitlines()[-1] + '"}')["question"] for p in prompts}
    assert parents <= originals and len(parents) == 2


def test_match_is_checked(runs, tmp_path):
    config, root, _, _ = runs
    random = replace(config, baseline="random")
    with pytest.raises(InputError, match="add baseline='random'"):
        run_seca(replace(config, match=str(root / "seca")), out=tmp_path / "a")
    with pytest.raises(InputError, match="used target"):
        run_seca(replace(random, target=config.reference + "x", match=str(root / "seca")),
                 out=tmp_path / "b")
    with pytest.raises(InputError, match="is a random baseline run"):
        run_seca(replace(random, match=str(root / "random")), out=tmp_path / "c")
    with pytest.raises(InputError, match="cannot read the SECA run"):
        run_seca(replace(random, match=str(tmp_path / "nowhere")), out=tmp_path / "d")
    with pytest.raises(InputError, match="baseline must be one of"):
        run_seca(replace(config, baseline="vibes"), out=tmp_path / "e")
    short = tmp_path / "short"
    short.mkdir()
    (short / "config.json").write_text((root / "seca" / "config.json").read_text())
    (short / "results.jsonl").write_text(
        (root / "seca" / "results.jsonl").read_text().splitlines()[0] + "\n")
    with pytest.raises(InputError, match="'q2' is not in the run to match"):
        run_seca(replace(random, match=str(short)), out=tmp_path / "f")


def test_cli_baseline_options(runs, tmp_path):
    config, root, _, baseline = runs
    args = ["attack", "seca", "--questions", config.questions, "--target", config.target,
            "--proposer", config.proposer, "--reference", config.reference, "--embedder",
            config.embedder, "--device", "cpu", "--similarity", "0.05", "--coherence-ratio",
            "1e6", "--iterations", "2"]
    result = CliRunner().invoke(cli, [*args, "--match", str(root / "seca"), "--out",
                                      str(tmp_path / "x")], prog_name="bbzo")
    assert result.exit_code == 2 and "'--match'" in result.stderr
    assert "needs --baseline random" in result.stderr
    result = CliRunner().invoke(cli, [*args, "--baseline", "random", "--limit", "1", "--out",
                                      str(tmp_path / "y"), "--json"], prog_name="bbzo")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["method"] == "random" and set(summary) == set(baseline)
    options = json.loads((tmp_path / "y" / "config.json").read_text())["options"]
    assert (options["baseline"], options["match"]) == ("random", None)
