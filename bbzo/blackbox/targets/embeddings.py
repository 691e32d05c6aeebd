"""``EmbeddingTarget``: sentence embeddings through sentence-transformers (spec ``embed:<name>``).

Answers ``embed`` requests (``payload["texts"]``, a list of strings) with unit-length vectors
(``{"embeddings": [[float] * dim]}``); the texts of every request in a call are encoded together.
"""

from __future__ import annotations

import time

import torch
from sentence_transformers import SentenceTransformer
from transformers.utils import logging as hf_logging

from bbzo.blackbox.protocol import Request, Response
from bbzo.blackbox.targets import models
from bbzo.blackbox.targets.base import Target
from bbzo.errors import InputError, TargetError


class EmbeddingTarget(Target):
    """A sentence-embedding model. ``id`` is ``embed:<alias or resolved path>``.

    Args:
        model: registry alias (default ``minilm-l6``) or a sentence-transformers folder.
        device: torch device; default CUDA when present, else CPU.
        max_batch: requests per call; texts are encoded in batches of ``batch_size``.
        batch_size: texts per forward pass.
    """

    capabilities = frozenset({"embed"})

    def __init__(self, model: str = models.DEFAULT_EMBEDDING, *, device: str | None = None,
                 max_batch: int = 32, batch_size: int = 64) -> None:
        if not isinstance(max_batch, int) or max_batch < 1:
            raise InputError(f"max_batch must be a positive integer, got {max_batch!r}")
        path, name = models.resolve(model, models.SENTENCE_EMBEDDING)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        hf_logging.disable_progress_bar()  # bbzo draws its own progress on stderr
        try:
            self.model = SentenceTransformer(str(path), device=device, local_files_only=True)
        except (OSError, ValueError) as err:
            raise TargetError(f"could not load sentence embeddings from {path}: {err}") from err
        self.id = f"embed:{name}"
        self.max_batch = max_batch
        self.batch_size = batch_size

    def call(self, requests: list[Request]) -> list[Response]:
        """Embed the texts of every request in one ``encode`` call; one response per request."""
        texts: list[str] = []
        for r in requests:
            self.check(r)
            batch = r.payload.get("texts")
            if not (isinstance(batch, list) and batch and all(isinstance(t, str) for t in batch)):
                raise InputError("embed requests need payload['texts']: a non-empty list of "
                                 "strings")
            texts += batch
        start = time.perf_counter()
        vectors = self.model.encode(texts, batch_size=self.batch_size, convert_to_numpy=True,
                                    normalize_embeddings=True, show_progress_bar=False)
        elapsed = time.perf_counter() - start
        responses, lo = [], 0
        for r in requests:
            hi = lo + len(r.payload["texts"])
            responses.append(Response({"embeddings": vectors[lo:hi].tolist()},
                                      latency_s=elapsed))
            lo = hi
        return responses
