"""The ``bbzo`` command: the group, its global options and the error contract.

Exit codes: 0 success, 1 failure, 2 usage error. Every failure is one line on stderr; a
traceback is printed only with ``--debug`` (or ``BBZO_DEBUG=1``). A bad settings field
(``FieldError``, e.g. ``--similarity nan``) is a usage error on the option of that field.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Sequence
from typing import Any

import click

from bbzo import __version__
from bbzo.cli.attack import attack
from bbzo.cli.console import error_line
from bbzo.cli.defend import defend, serve_classifier_command
from bbzo.cli.demo import demo
from bbzo.cli.info import info
from bbzo.cli.ledger import ledger
from bbzo.cli.models import models
from bbzo.cli.serve import serve_command
from bbzo.cli.synth import synth
from bbzo.cli.unlearn import unlearn
from bbzo.errors import BbzoError
from bbzo.runs.settings import FieldError

USAGE_EXIT = 2
FAILURE_EXIT = 1


class BbzoGroup(click.Group):
    """A click group that turns every exception into one line and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception:
            if ctx.params.get("debug"):
                traceback.print_exc()
            raise

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True,
             **extra: Any) -> int:
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
            code = rv if isinstance(rv, int) else 0
        except click.exceptions.NoArgsIsHelpError as error:
            click.echo(error.ctx.get_help())
            code = 0
        except click.UsageError as error:
            where = f" (see '{error.ctx.command_path} --help')" if error.ctx else ""
            code = _fail(error.format_message() + where, USAGE_EXIT)
        except click.ClickException as error:
            code = _fail(error.format_message(), error.exit_code)
        except click.Abort:
            code = _fail("interrupted", FAILURE_EXIT)
        except FieldError as error:
            code = _fail(f"Invalid value for '--{error.field.replace('_', '-')}': {error.why}",
                         USAGE_EXIT)
        except BbzoError as error:
            code = _fail(str(error), FAILURE_EXIT)
        except Exception as error:  # a bug: keep it to one line unless --debug was given
            code = _fail(f"unexpected {type(error).__name__}: {error} (rerun as 'bbzo --debug "
                         f"...' for the traceback)", FAILURE_EXIT)
        if standalone_mode:
            sys.exit(code)
        return code


def _fail(message: str, code: int) -> int:
    error_line(message)
    return code


@click.group(cls=BbzoGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="bbzo", message="%(prog)s %(version)s")
@click.option("--debug", is_flag=True, envvar="BBZO_DEBUG",
              help="Print the traceback of an error (also BBZO_DEBUG=1).")
def cli(debug: bool) -> None:
    """bbzo: black-box attacks, defenses, unlearning and privacy on one zeroth-order engine.

    Run commands write a run folder (--out): config.json, results, summary.json.
    Exit codes: 0 success, 1 failure, 2 usage error.
    """


cli.add_command(attack)
cli.add_command(info)
cli.add_command(demo)
cli.add_command(models)
cli.add_command(ledger)
cli.add_command(serve_command)
cli.add_command(defend)
cli.add_command(serve_classifier_command)
cli.add_command(synth)
cli.add_command(unlearn)


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point; exits with the command's code."""
    cli.main(args=argv, prog_name="bbzo")
