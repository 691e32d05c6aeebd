"""`bbzo ledger show` and `bbzo models list` report what is really there."""

import json

from click.testing import CliRunner

from bbzo.blackbox.query import Ledger, QueryLayer, Request, Response
from bbzo.blackbox.targets.base import Target
from bbzo.blackbox.targets.models import REGISTRY
from bbzo.cli.main import cli


class Sum(Target):
    """A local target answering the sum of the inputs; counts its calls."""

    id = "sum"
    capabilities = frozenset({"classify"})
    max_batch = 8

    def __init__(self):
        self.calls = 0

    def call(self, requests):
        self.calls += len(requests)
        return [Response({"probs": [[float(sum(r.payload["inputs"]))]]}) for r in requests]


def test_ledger_show_counts_requests_and_cache_hits(tmp_path):
    target = Sum()
    requests = [Request("classify", {"inputs": [i, 1]}) for i in range(5)]
    with Ledger(tmp_path / "ledger.sqlite") as book:
        QueryLayer(target, ledger=book).submit(requests)
        QueryLayer(target, ledger=book).submit(requests[:3])
    assert target.calls == 5
    result = CliRunner().invoke(cli, ["ledger", "show", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert (summary["requests"], summary["answered"], summary["cache_hits"]) == (5, 5, 3)
    assert summary["targets"]["sum"]["requests"] == 5
    table = CliRunner().invoke(cli, ["ledger", "show", str(tmp_path / "ledger.sqlite")])
    assert table.exit_code == 0 and "cache hits" in table.output


def test_ledger_show_missing_run_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(cli, ["ledger", "show", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert "no ledger at" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "nope").exists()


def test_models_list_shows_every_alias_with_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("BBZO_CACHE", str(tmp_path))
    result = CliRunner().invoke(cli, ["models", "list", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["alias"]: r for r in json.loads(result.output)}
    assert set(rows) == set(REGISTRY)
    for alias, row in rows.items():
        assert row["install"] == REGISTRY[alias].install
        assert row["installed"] == bool(row["location"])
