"""``corrupt_prompts``: a forward hook on the token-embedding layer that corrupts chosen prompt
tokens, installed and removed by a context manager that removes only its own hook.

The hook is told the prompts to corrupt (token ids and a token mask each). Every time the layer
runs it looks for those prompts in its input ids (B, L): at the start of a row (scoring,
right-padded: the tokens after the prompt, e.g. answer options, stay clean) or at the end of a
row (the prompt pass of a generation, left-padded). A generated token enters the layer alone
(L = 1), and a prompt of one token has nothing to corrupt (its last token is never selected),
so generated tokens are never corrupted.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch

from bbzo.unlearn.corruptions import Corruption


def row_seed(ids: Sequence[int]) -> int:
    """A stable seed from a prompt's token ids (the same in every process and batch)."""
    return int.from_bytes(hashlib.sha256(np.asarray(ids, np.int64).tobytes()).digest()[:7], "big")


class corrupt_prompts:  # noqa: N801 - used as a context manager, like torch.no_grad
    """Corrupt the masked tokens of ``prompts`` whenever ``layer`` embeds them.

    Args:
        layer: the model's token-embedding module (``HFTarget.input_embeddings()``).
        prompts: (token ids, boolean mask of the same length) per prompt.
        corruption: what to do to the selected embeddings.
        strength: a scalar or a vector (``corruption.dims(hidden)``).

    Attributes:
        hits: rows corrupted so far (for tests and reports).
    """

    def __init__(self, layer: torch.nn.Module, prompts: Sequence[tuple[Sequence[int], np.ndarray]],
                 corruption: Corruption, strength) -> None:
        self.layer = layer
        self.prompts = [(list(map(int, ids)), np.asarray(mask, bool)) for ids, mask in prompts
                        if len(ids) >= 2 and np.asarray(mask, bool).any()]
        self.corruption = corruption
        self.strength = torch.as_tensor(np.asarray(strength, dtype=np.float64))
        self.hits = 0
        self._handle = None

    def __enter__(self) -> corrupt_prompts:
        self._handle = self.layer.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.remove()  # this hook only; any other hook stays
            self._handle = None

    def _find(self, row: list[int]) -> tuple[int, list[int], np.ndarray] | None:
        """(offset, ids, mask) of the longest registered prompt at the start or end of ``row``."""
        best = None
        for ids, mask in self.prompts:
            n = len(ids)
            if n > len(row) or (best is not None and n <= len(best[1])):
                continue
            if row[:n] == ids:
                best = (0, ids, mask)
            elif row[len(row) - n:] == ids:
                best = (len(row) - n, ids, mask)
        return best

    def _hook(self, module: torch.nn.Module, inputs: tuple, output: torch.Tensor):
        ids = inputs[0] if inputs else None
        if not isinstance(ids, torch.Tensor) or ids.ndim != 2 or ids.shape[1] < 2:
            return None
        out = None
        for b, row in enumerate(ids.tolist()):
            found = self._find(row)
            if found is None:
                continue
            offset, prompt, mask = found
            where = torch.as_tensor(np.flatnonzero(mask) + offset, device=output.device)
            out = output.clone() if out is None else out
            out[b, where] = self.corruption.apply(output[b, where], self.strength.to(output),
                                                  row_seed(prompt))
            self.hits += 1
        return out
