"""The protocol every target implements."""

from __future__ import annotations

from bbzo.blackbox.protocol import Request, Response
from bbzo.errors import InputError


class Target:
    """A model bbzo can only query.

    Attributes:
        id: a stable, secret-free identity (spec string + model + options that change answers);
            part of every ledger key.
        capabilities: request kinds this target answers.
        max_batch: how many requests one ``call`` may carry (local models batch; APIs take 1).
        remote: True when requests cost money or hit rate limits (async HTTP).
    """

    id: str = "target"
    capabilities: frozenset[str] = frozenset()
    max_batch: int = 1
    remote: bool = False

    def check(self, request: Request) -> None:
        """Raise ``InputError`` if this target cannot answer ``request``."""
        if request.kind not in self.capabilities:
            raise InputError(f"target {self.id} cannot answer {request.kind!r} requests; it "
                             f"supports {', '.join(sorted(self.capabilities))}")

    def call(self, requests: list[Request]) -> list[Response]:
        """Answer a batch synchronously (local targets). One response per request, in order."""
        raise NotImplementedError

    async def acall(self, request: Request) -> Response:
        """Answer one request asynchronously (remote targets)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release resources (HTTP clients, models)."""
