"""Helpers for tests of ``bbzo serve``: a tiny model that never stops on its own and takes a set
time per forward pass (so a generation's length is under the test's control), and bodies."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from tiny import save_tiny_lm

from bbzo.blackbox.targets.hf import HFTarget

NAME = "tiny"


class Steps:
    """Counts the model's forward passes (one per generated token, plus one per prompt batch)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, *args: object) -> None:
        self.count += 1


def endless_target(folder: Path, step_s: float = 0.0) -> tuple[HFTarget, Steps]:
    """The tiny LM of ``folder`` with end-of-text made impossible (every completion runs to
    ``max_tokens``), each forward pass taking at least ``step_s`` seconds; and its step
    counter."""
    target = HFTarget(str(folder), device="cpu")
    model = target.model
    eos = target.tokenizer.eos_token_id
    v = torch.randn(model.config.n_embd, generator=torch.Generator().manual_seed(2))
    v /= v.norm()
    with torch.no_grad():  # tied weights: the EOS row scores -100 * 5 along the ln_f bias
        model.transformer.ln_f.bias.copy_(5.0 * v)
        model.transformer.wte.weight[eos] = -100.0 * v
    steps = Steps()

    def hook(*args: object) -> None:
        steps()
        if step_s:
            time.sleep(step_s)

    model.register_forward_pre_hook(hook)
    return target, steps


def tiny_folder(tmp_path_factory) -> Path:
    return save_tiny_lm(tmp_path_factory.mktemp("served"))


def chat_body(max_tokens: int = 1, content: str = "hi", **extra: object) -> dict:
    return {"model": NAME, "messages": [{"role": "user", "content": content}],
            "max_tokens": max_tokens, **extra}


def is_openai_error(response) -> bool:
    """A JSON answer in OpenAI's error shape."""
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return isinstance(error, dict) and set(error) == {"message", "type", "param", "code"} \
        and isinstance(error["message"], str) and error["message"] != ""
