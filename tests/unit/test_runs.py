"""Run folders: refusal of non-empty folders, atomic and incremental writes, config, redaction."""

import json

import numpy as np
import pytest

from bbzo.errors import InputError
from bbzo.redaction import REDACTED, redact_argv
from bbzo.redaction import redact_data as redact
from bbzo.runs import MANIFEST, RunFolder, check_run_folder


def leftovers(path):
    return sorted(p.name for p in path.iterdir() if p.name.endswith(".tmp"))


def snapshot(path):
    """Every file under ``path`` with its bytes."""
    return {p.relative_to(path): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_refuses_non_empty_folder_without_resume(tmp_path):
    RunFolder(tmp_path).append_jsonl("results.jsonl", {})
    with pytest.raises(InputError, match="not empty; pass --resume"):
        RunFolder(tmp_path)
    assert RunFolder(tmp_path, resume=True).path == tmp_path


def test_creates_missing_and_accepts_empty_folders(tmp_path):
    run = RunFolder(tmp_path / "a" / "b")
    assert run.path.is_dir() and not run.resumed
    assert RunFolder(tmp_path / "a" / "b").path.is_dir()  # still empty: no --resume needed


def test_refuses_a_file_as_folder(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        RunFolder(tmp_path / "f", resume=True)


def test_file_names_must_be_plain(tmp_path):
    run = RunFolder(tmp_path)
    for bad in ("../x.json", "sub/x.json", "", ".."):
        with pytest.raises(InputError, match="plain file name"):
            run.write_json(bad, {})


def test_write_json_is_atomic_and_leaves_no_temp_files(tmp_path):
    run = RunFolder(tmp_path)
    run.write_json("summary.json", {"a": 1, "x": np.float64(0.5), "v": np.arange(3)})
    assert json.loads((tmp_path / "summary.json").read_text()) == {"a": 1, "x": 0.5,
                                                                   "v": [0, 1, 2]}
    assert leftovers(tmp_path) == []


def test_failed_write_keeps_old_content_and_removes_temp(tmp_path):
    run = RunFolder(tmp_path)
    run.write_json("summary.json", {"version": 1})
    with pytest.raises(InputError, match="JSON"):
        run.write_json("summary.json", {"version": 2, "bad": object()})
    with pytest.raises(RuntimeError), run.atomic("summary.json") as tmp:
        tmp.write_text("half a fi")
        raise RuntimeError("crash while writing")
    assert json.loads((tmp_path / "summary.json").read_text()) == {"version": 1}
    assert leftovers(tmp_path) == []


def test_resume_removes_temp_files_of_a_crashed_writer(tmp_path):
    RunFolder(tmp_path).write_json("summary.json", {})
    (tmp_path / ".summary.json.0123abcd4567.tmp").write_text("partial")
    (tmp_path / f".{MANIFEST}.0123abcd4567.tmp").write_text("partial")
    RunFolder(tmp_path, resume=True)
    assert leftovers(tmp_path) == []


def test_jsonl_appends_one_record_per_line_and_reads_back(tmp_path):
    run = RunFolder(tmp_path)
    assert run.read_jsonl("results.jsonl") == []
    records = [{"i": i, "loss": float(np.float32(0.1 * i))} for i in range(5)]
    for r in records:
        run.append_jsonl("results.jsonl", r)
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert len(lines) == 5 and [json.loads(x) for x in lines] == records
    assert run.read_jsonl("results.jsonl") == records


def test_resume_drops_a_torn_last_line(tmp_path):
    run = RunFolder(tmp_path)
    run.append_jsonl("results.jsonl", {"i": 0})
    run.append_jsonl("results.jsonl", {"i": 1})
    with open(tmp_path / "results.jsonl", "a") as f:
        f.write('{"i": 2, "lo')  # a crash in the middle of a write
    resumed = RunFolder(tmp_path, resume=True)
    assert resumed.read_jsonl("results.jsonl") == [{"i": 0}, {"i": 1}]
    resumed.append_jsonl("results.jsonl", {"i": 2})
    assert [r["i"] for r in resumed.read_jsonl("results.jsonl")] == [0, 1, 2]


def test_corrupt_line_in_the_middle_is_reported_with_its_number(tmp_path):
    RunFolder(tmp_path).own("r.jsonl").write_text('{"i": 0}\nnot json\n{"i": 2}\n')
    with pytest.raises(InputError, match=r"r\.jsonl:2 is not valid JSON"):
        RunFolder(tmp_path, resume=True).read_jsonl("r.jsonl")


def test_config_records_options_seed_versions_and_platform(tmp_path):
    run = RunFolder(tmp_path)
    run.write_config({"budget": 100, "methods": ("zo-sgd", "zo-adam")}, seed=7)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["seed"] == 7
    assert config["options"] == {"budget": 100, "methods": ["zo-sgd", "zo-adam"]}
    for library in ("python", "bbzo", "torch", "numpy", "transformers", "openai"):
        assert config["versions"][library], library
    assert config["device"]["device"] in ("cpu", "cuda", "mps")
    assert config["platform"] and config["created_at"]


def test_resume_requires_the_same_options_and_seed(tmp_path):
    RunFolder(tmp_path).write_config({"budget": 100}, seed=0)
    same = RunFolder(tmp_path, resume=True)
    assert same.resumed
    config = same.write_config({"budget": 100}, seed=0)
    assert len(config["resumed_at"]) == 1
    with pytest.raises(InputError, match=r"options\.budget: 100 → 200"):
        RunFolder(tmp_path, resume=True).write_config({"budget": 200}, seed=0)
    with pytest.raises(InputError, match=r"seed: 0 → 1"):
        RunFolder(tmp_path, resume=True).write_config({"budget": 100}, seed=1)


SECRET = "sk-" + "A1b2C3d4" * 4


def test_secrets_never_reach_the_disk(tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", ["bbzo", "attack", "--api-key", "hunter2-argv",
                                     "--hf-token=hunter3-argv", "--max-tokens", "64"])
    run = RunFolder(tmp_path)
    options = {"api_key": "hunter2", "target": {"OPENAI_API_KEY": "hunter4", "hf_token": "x1y2"},
               "headers": ["Bearer hunter5"], "prompt": SECRET, "max_tokens": 64,
               "db-password": "hunter6"}
    run.write_config(options, seed=0)
    run.append_jsonl("results.jsonl", {"client": {"secret": "hunter7"}, "tokens": 12})
    run.write_summary({"auth": "hunter8", "note": SECRET})
    disk = "".join(p.read_text() for p in tmp_path.iterdir())
    for secret in ("hunter", "x1y2", SECRET):
        assert secret not in disk
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["options"]["max_tokens"] == 64  # counts of tokens are not secrets
    assert config["options"]["api_key"] == REDACTED
    assert config["argv"][-2:] == ["--max-tokens", "64"]
    assert run.read_jsonl("results.jsonl")[0]["tokens"] == 12


def test_redaction_leaves_ordinary_values_alone():
    plain = {"budget": 100, "model": "smollm2-135m-instruct", "keys": ["a"], "sort_key": "x",
             "max_tokens": 5, "skip": "sk-short"}
    assert redact(plain) == plain
    assert redact_argv(["bbzo", "demo", "--seed", "3"]) == ["bbzo", "demo", "--seed", "3"]


# --- bbzo writes only what it created --------------------------------------------------------

def test_a_users_folder_is_refused_and_never_repaired(tmp_path):
    # The reported bug: the user's own questions.jsonl, without a final newline, in --out.
    user = tmp_path / "dl"
    user.mkdir()
    (user / "questions.jsonl").write_text('{"q": 1}\n{"q": 2}')
    (user / ".notes.tmp").write_text("mine")
    before = snapshot(user)
    for resume in (False, True):
        with pytest.raises(InputError, match=r"not a bbzo run \(no \.bbzo-run\.json\)"):
            RunFolder(user, resume=resume)
    assert snapshot(user) == before


def test_repair_touches_only_the_files_bbzo_made(tmp_path):
    run = RunFolder(tmp_path)
    run.append_jsonl("results.jsonl", {"i": 0})
    (tmp_path / "results.jsonl").open("a").write('{"i": 1, "to')
    (tmp_path / "mine.jsonl").write_text('{"a": 1}\n{"a": 2')  # the user's, added later
    (tmp_path / ".mine.json.0123abcd4567.tmp").write_text("the user's")
    resumed = RunFolder(tmp_path, resume=True)
    assert resumed.read_jsonl("results.jsonl") == [{"i": 0}]
    assert (tmp_path / "mine.jsonl").read_text() == '{"a": 1}\n{"a": 2'
    assert (tmp_path / ".mine.json.0123abcd4567.tmp").read_text() == "the user's"
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert manifest["files"] == ["results.jsonl"]


def test_checking_a_folder_writes_nothing(tmp_path):
    check_run_folder(tmp_path / "new")
    assert not (tmp_path / "new").exists()
    with pytest.raises(InputError, match="is a file"):
        (tmp_path / "f").write_text("x")
        check_run_folder(tmp_path / "f")


def test_a_deleted_config_cannot_change_the_options_of_a_resumed_run(tmp_path):
    RunFolder(tmp_path).write_config({"budget": 100}, seed=0)
    (tmp_path / "config.json").unlink()
    with pytest.raises(InputError, match="lost its config.json"):
        RunFolder(tmp_path, resume=True).write_config({"budget": 200}, seed=0)
    with pytest.raises(InputError, match="lost its config.json"):
        RunFolder(tmp_path, resume=True).write_config({"budget": 100}, seed=1)
    config = RunFolder(tmp_path, resume=True).write_config({"budget": 100}, seed=0)
    assert config["options"] == {"budget": 100}


def test_credentials_inside_urls_never_reach_the_disk(tmp_path, monkeypatch):
    url = "https://alice:hunter9@llm.example.com/v1?api_key=hunter10&model=m&token=hunter11"
    monkeypatch.setattr("sys.argv", ["bbzo", "attack", "seca", "--base-url", url,
                                     f"--base-url={url}"])
    RunFolder(tmp_path).write_config({"base_url": url}, seed=0)
    disk = (tmp_path / "config.json").read_text()
    assert "hunter" not in disk and "alice" not in disk
    config = json.loads(disk)
    assert config["options"]["base_url"] == (f"https://{REDACTED}@llm.example.com/v1?api_key="
                                             f"{REDACTED}&model=m&token={REDACTED}")
    assert config["argv"][-2] == config["options"]["base_url"]
    assert redact("https://llm.example.com/v1?model=m") == "https://llm.example.com/v1?model=m"


def test_a_run_made_before_manifests_is_adopted_with_only_its_own_files(tmp_path):
    config = {"options": {"budget": 1}, "seed": 0, "versions": {"bbzo": "0.1"},
              "created_at": "2026-01-01T00:00:00+00:00"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "summary.json").write_text(json.dumps({"files": ["config.json", "results.jsonl",
                                                                 "summary.json"]}))
    (tmp_path / "results.jsonl").write_text('{"i": 0}\n{"i": 1, "to')
    (tmp_path / "notes.jsonl").write_text('{"mine": 1}\n{"mine": 2')
    with pytest.raises(InputError, match="not empty; pass --resume"):
        RunFolder(tmp_path)
    run = RunFolder(tmp_path, resume=True)
    assert run.owned() == ["config.json", "results.jsonl", "summary.json"]
    assert run.read_jsonl("results.jsonl") == [{"i": 0}]
    assert (tmp_path / "results.jsonl").read_text() == '{"i": 0}\n'
    assert (tmp_path / "notes.jsonl").read_text() == '{"mine": 1}\n{"mine": 2'
    (tmp_path / "summary.json").write_text("{}")  # without its summary it is not told apart
    (tmp_path / MANIFEST).unlink()
    with pytest.raises(InputError, match="not a bbzo run"):
        RunFolder(tmp_path, resume=True)
