"""``bbzo serve``: an OpenAI-compatible server in front of a local model, with fault injection."""

from __future__ import annotations

import click

from bbzo.blackbox.serve import DEFAULT_MODEL, Faults, parse_fail, serve
from bbzo.blackbox.serve.app import DEFAULT_HOST, MAX_BODY_BYTES, MAX_QUEUE
from bbzo.cli.console import note
from bbzo.errors import InputError


def _fail_option(ctx: click.Context, param: click.Parameter,
                 values: tuple[str, ...]) -> dict[int, float]:
    try:
        return dict(parse_fail(value) for value in values)
    except InputError as error:
        raise click.BadParameter(str(error)) from None


@click.command("serve")
@click.option("--model", default=DEFAULT_MODEL, show_default=True,
              help="Target spec of the local model to serve (hf:<alias-or-folder>).")
@click.option("--model-name", default=None,
              help="The only model name clients may send [default: the registry alias, the "
                   "--model spec or the target id; /v1/models lists them].")
@click.option("--host", default=DEFAULT_HOST, show_default=True,
              help="Address to bind; anything but 127.0.0.1 exposes the model to the network.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="Port to bind (0 picks a free one).")
@click.option("--api-key", envvar="BBZO_SERVE_API_KEY", default=None, show_envvar=True,
              help="Require 'Authorization: Bearer <key>' (prefer the environment variable: "
                   "a key on the command line is visible to other users).")
@click.option("--fail", "fail", multiple=True, callback=_fail_option, metavar="STATUS:RATE",
              help="Answer this HTTP error with this probability, e.g. --fail 429:0.2 "
                   "(repeatable).")
@click.option("--latency", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Seconds added to every chat completion.")
@click.option("--jitter", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Extra uniform(0, JITTER) seconds of latency.")
@click.option("--rpm", type=click.IntRange(min=1), default=None,
              help="Admit at most this many chat completions per minute; the rest get 429 "
                   "with Retry-After.")
@click.option("--retry-after", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Retry-After seconds sent with injected 429s.")
@click.option("--timeout-rate", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Probability that a request hangs for --timeout-after seconds, then 504.")
@click.option("--timeout-after", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="How long a hanging request sleeps (set it above the client's timeout).")
@click.option("--no-logprobs", is_flag=True,
              help="Answer without logprobs, like APIs that lack them.")
@click.option("--max-body-bytes", type=click.IntRange(min=1), default=MAX_BODY_BYTES,
              show_default=True, help="Largest request body accepted (413 beyond).")
@click.option("--max-queue", type=click.IntRange(min=1), default=MAX_QUEUE, show_default=True,
              help="Most completions waiting or running at the model; more get 503 with "
                   "Retry-After.")
@click.option("--deadline", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Seconds a completion may take at the model before it is stopped and "
                   "answered 504 [default: 10 + 4 x max_tokens x the seconds per token "
                   "measured at start-up].")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of fault draws and of sampling seeds for unseeded requests.")
def serve_command(model: str, model_name: str | None, host: str, port: int,
                  api_key: str | None, fail: dict[int, float], latency: float, jitter: float,
                  rpm: int | None, retry_after: float, timeout_rate: float,
                  timeout_after: float, no_logprobs: bool, max_body_bytes: int,
                  max_queue: int, deadline: float | None, seed: int) -> None:
    """Serve a local model behind an OpenAI-compatible API (/v1/chat/completions,
    /v1/completions, /v1/models, and /bbzo/stats with what the server received), optionally
    failing on purpose."""
    faults = Faults(fail=fail, latency_s=latency, jitter_s=jitter, rpm=rpm,
                    retry_after_s=retry_after, timeout_rate=timeout_rate,
                    timeout_s=timeout_after, seed=seed)

    def ready(handle) -> None:
        auth = "on" if api_key else "off"
        names = ", ".join(map(repr, handle.names))
        note(f"serving {model} as {names} at {handle.url} (API key: {auth}); Ctrl-C stops")

    try:
        serve(model, host=host, port=port, api_key=api_key or None, faults=faults,
              model_name=model_name, logprobs=not no_logprobs, max_body_bytes=max_body_bytes,
              seed=seed, max_queue=max_queue, request_timeout=deadline, on_ready=ready)
    except KeyboardInterrupt:
        note("stopped")
