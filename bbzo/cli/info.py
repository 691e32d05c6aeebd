"""``bbzo info``: versions, compute device and the offline models and data sets."""

from __future__ import annotations

import click

from bbzo.assets import list_assets
from bbzo.cli.console import print_json, print_table
from bbzo.runs import device_info, library_versions


@click.command("info")
@click.option("--json", "json_output", is_flag=True, help="Print the report as JSON on stdout.")
def info(json_output: bool) -> None:
    """Show library versions, the compute device and which offline assets are installed."""
    report = {"versions": library_versions(), "device": device_info(),
              "assets": [row.as_dict() for row in list_assets()]}
    if json_output:
        print_json(report)
        return
    print_table("Versions", ["library", "version"],
                [(name, version or "not installed") for name, version in
                 report["versions"].items()])
    print_table("Device", ["key", "value"], list(report["device"].items()))
    print_table("Offline assets", ["name", "kind", "installed", "location or install command"],
                [(a["name"], a["kind"], "yes" if a["installed"] else "no",
                  a["location"] if a["installed"] else a["install"]) for a in report["assets"]])
