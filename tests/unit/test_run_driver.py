"""``bbzo.runs.driver.run_items`` and ``bbzo.runs.roles.Roles`` without models: resume, budget
stop, per-item error records, retry on request; one load per spec, nothing written on load."""

from __future__ import annotations

import pytest
from seca_support import ScriptedTarget

import bbzo.runs.roles as run_roles
from bbzo.blackbox.budget import Budget
from bbzo.errors import BudgetExceeded, InputError, TargetError
from bbzo.runs import RunFolder
from bbzo.runs.driver import latest_records, pending, run_items
from bbzo.runs.roles import ModelSettings, Roles

ITEMS = ["a", "b", "c", "d"]


class Work:
    """Records ``{"id": item, "n": calls so far}``; fails or runs out of budget on demand."""

    def __init__(self, fail=(), budget_at=None):
        self.fail, self.budget_at, self.calls = set(fail), budget_at, []

    def __call__(self, item):
        self.calls.append(item)
        if item == self.budget_at:
            raise BudgetExceeded("query budget exhausted")
        if item in self.fail:
            raise TargetError(f"model refused\n{item}")
        return {"id": item, "n": len(self.calls)}


def todo(run, retry_errors=False):
    return pending(ITEMS, str, run.read_jsonl("results.jsonl"), retry_errors=retry_errors)


def test_a_failing_item_is_recorded_and_the_loop_goes_on(tmp_path):
    run = RunFolder(tmp_path)
    outcome = run_items(run, ITEMS, Work(fail={"b"}), item_id=str)
    assert (outcome.stopped, outcome.attempted, outcome.errors) == (None, 4, 1)
    records = run.read_jsonl("results.jsonl")
    assert [r["id"] for r in records] == ITEMS
    assert records[1] == {"id": "b", "error": "TargetError: model refused b"}  # one line
    assert todo(run) == [] and todo(run, retry_errors=True) == ["b"]
    again = Work()
    run_items(run, todo(run, retry_errors=True), again, item_id=str)
    assert again.calls == ["b"]
    assert [r.get("error") for r in latest_records(run.read_jsonl("results.jsonl"))] == \
        [None] * 4


def test_budget_stops_the_loop_and_resume_does_the_rest(tmp_path):
    run = RunFolder(tmp_path)
    outcome = run_items(run, ITEMS, Work(budget_at="c"), item_id=str)
    assert outcome.stopped == "query budget exhausted" and outcome.errors == 0
    assert [r["id"] for r in run.read_jsonl("results.jsonl")] == ["a", "b"]
    resumed = RunFolder(tmp_path, resume=True)
    work = Work()
    seen = []
    run_items(resumed, todo(resumed), work, item_id=str,
              progress=lambda label, done, total: seen.append((label, done, total)),
              label="things", total=len(ITEMS))
    assert work.calls == ["c", "d"]
    assert seen == [("things", 2, 4), ("things", 3, 4), ("things", 4, 4)]


def test_a_bug_is_not_recorded_as_an_item_error(tmp_path):
    def buggy(item):
        raise KeyError(item)

    run = RunFolder(tmp_path)
    with pytest.raises(KeyError):
        run_items(run, ITEMS, buggy, item_id=str)
    assert run.read_jsonl("results.jsonl") == []


def scripted(spec, **options):
    return ScriptedTarget(lambda r: {"text": "x"}, ["complete"], name=f"{spec}{options}")


def test_roles_load_one_model_per_spec_and_write_only_on_connect(tmp_path, monkeypatch):
    loaded = []

    def load(spec, **options):
        loaded.append((spec, options))
        return scripted(spec, **options)

    monkeypatch.setattr(run_roles, "load_target", load)
    specs = {"target": "hf:m", "proposer": "hf:m", "embedder": "embed", "judge": None}
    roles = Roles(specs, ModelSettings(device="cpu", local_batch=4, base_url="http://h"))
    assert loaded == [("hf:m", {"device": "cpu", "max_batch": 4}), ("embed", {"device": "cpu"})]
    assert roles.targets["target"] is roles.targets["proposer"] and "judge" not in roles.targets
    assert list(tmp_path.iterdir()) == []
    roles.connect(tmp_path / "ledger.sqlite", Budget(max_queries=5))
    assert set(roles.layers) == {"target", "proposer", "embedder"}
    assert roles.layers["target"].budget is roles.layers["embedder"].budget
    with pytest.raises(InputError, match="already connected"):
        roles.connect(tmp_path / "other.sqlite", Budget())
    roles.close()


def test_base_url_goes_only_to_openai_specs_of_its_roles(monkeypatch):
    loaded = []
    monkeypatch.setattr(run_roles, "load_target",
                        lambda spec, **o: loaded.append((spec, o)) or scripted(spec, **o))
    Roles({"target": "openai:m", "judge": "openai:j", "proposer": "hf:p"},
          ModelSettings(base_url="http://h")).close()
    assert loaded == [("openai:m", {"base_url": "http://h"}), ("openai:j", {}),
                      ("hf:p", {"max_batch": 16})]
