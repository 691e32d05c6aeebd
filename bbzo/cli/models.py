"""``bbzo models list``: the offline model aliases, whether each is installed, how to install."""

from __future__ import annotations

import click

from bbzo.blackbox.targets.models import list_models
from bbzo.cli.console import print_json, print_table


@click.group("models")
def models() -> None:
    """The offline models bbzo can load without a model hub."""


@models.command("list")
@click.option("--json", "json_output", is_flag=True, help="Print the list as JSON on stdout.")
def list_command(json_output: bool) -> None:
    """Show each alias, whether it is installed, and the command that installs a missing one."""
    rows = list_models()
    if json_output:
        print_json([vars(row) for row in rows])
        return
    print_table("Offline models", ["alias", "kind", "installed", "location or install command"],
                [(r.alias, r.kind, "yes" if r.installed else "no",
                  r.location if r.installed else r.install) for r in rows])
