"""``bbzo serve``: an OpenAI-compatible server in front of a local model, with fault injection.

``start_server(target, ...)`` runs one in a background thread (tests, benchmarks);
``serve(spec, ...)`` loads a target spec and serves it until interrupted (the CLI). Limits,
deadlines and endpoints: ``app``.
"""

from __future__ import annotations

from collections.abc import Callable

from bbzo.blackbox.serve.app import (
    DEFAULT_HOST,
    MAX_BODY_BYTES,
    MAX_QUEUE,
    ServerHandle,
    served_names,
    start_server,
)
from bbzo.blackbox.serve.faults import Faults, parse_fail
from bbzo.blackbox.targets.models import DEFAULT_LM

DEFAULT_MODEL = f"hf:{DEFAULT_LM}"

__all__ = ["DEFAULT_MODEL", "Faults", "ServerHandle", "parse_fail", "serve", "served_names",
           "start_server"]


def serve(model: str = DEFAULT_MODEL, *, host: str = DEFAULT_HOST, port: int = 8000,
          api_key: str | None = None, faults: Faults | None = None,
          model_name: str | None = None, logprobs: bool = True,
          max_body_bytes: int = MAX_BODY_BYTES, seed: int = 0,
          max_queue: int = MAX_QUEUE, request_timeout: float | None = None,
          on_ready: Callable[[ServerHandle], None] | None = None,
          **target_options: object) -> None:
    """Load the target ``model`` (a spec such as ``hf:<alias-or-folder>``) and serve it until
    interrupted. Clients send ``model_name`` as the model or, without it, the registry alias,
    the spec or the target id (``served_names``); ``on_ready`` is called with the running
    server's handle. Other arguments as in ``start_server``;
    ``target_options`` go to the target (``device=``, ``max_batch=``...)."""
    from bbzo.blackbox.targets.spec import load_target

    target = load_target(model, **target_options)
    try:
        handle = start_server(target, host=host, port=port, api_key=api_key,
                              model_name=model_name, faults=faults, logprobs=logprobs,
                              max_body_bytes=max_body_bytes, seed=seed, max_queue=max_queue,
                              request_timeout=request_timeout, spec=model)
        try:
            if on_ready is not None:
                on_ready(handle)
            handle.wait()
        finally:
            handle.close()
    finally:
        target.close()
