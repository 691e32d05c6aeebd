"""Helpers for the SECA tests: tiny models with room for SECA's prompts, scripted parts.

SECA's prompts (persona, options, few-shot proposer lines) run to a few hundred tokens of the
tiny byte-level tokenizer, beyond the 128 positions of ``tiny.tiny_lm``; ``save_roomy_lm`` builds
the same tiny GPT-2 with 1024 positions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from tiny import tiny_tokenizer
from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel

from bbzo.attacks.seca.questions import Question
from bbzo.blackbox.protocol import Request, Response
from bbzo.blackbox.targets.base import Target

QUESTION = Question("q1", "What is the capital of France?", ("Paris", "Berlin", "Rome", "Madrid"),
                    0, "geography")


def save_roomy_lm(folder: Path, seed: int = 0) -> Path:
    """A tiny random GPT-2 (2 layers, width 32, 1024 positions) and its tokenizer in ``folder``."""
    tok = tiny_tokenizer()
    eos = tok.eos_token_id
    config = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=1024,
                        bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config).eval()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def save_tiny_embedder(folder: Path, seed: int = 0) -> Path:
    """A tiny random BERT with mean pooling saved as a sentence-transformers folder."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    tok = tiny_tokenizer()
    config = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=512, pad_token_id=tok.pad_token_id)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        BertModel(config).save_pretrained(folder / "bert")
    tok.save_pretrained(folder / "bert")
    encoder = Transformer(str(folder / "bert"), max_seq_length=256)
    model = SentenceTransformer(modules=[encoder, Pooling(32, "mean")], device="cpu")
    model.save(str(folder / "st"))
    return folder / "st"


class ScriptedProposer:
    """Proposals from ``script(step, parent_index, j, parent_text)``; records every call."""

    def __init__(self, script: Callable[[int, int, int, str], str | None]) -> None:
        self.script = script
        self.calls: list[dict] = []

    def propose(self, question: Question, parents: Sequence[str], m: int,
                step: int) -> list[str | None]:
        texts = [self.script(step, i, j, p) for i, p in enumerate(parents) for j in range(m)]
        self.calls.append({"step": step, "parents": list(parents), "m": m, "texts": texts})
        return texts


class ScriptedTarget(Target):
    """A local target answering the ``kinds`` it is given from a function of the request (an
    output dict, or a whole ``Response``); records every request it is sent."""

    def __init__(self, answer: Callable[[Request], dict], kinds: Sequence[str],
                 name: str = "scripted") -> None:
        self.id = name
        self.capabilities = frozenset(kinds)
        self.max_batch = 64
        self.answer = answer
        self.seen: list[Request] = []

    def call(self, requests: list[Request]) -> list[Response]:
        self.seen += requests
        answers = [self.answer(r) for r in requests]
        return [a if isinstance(a, Response) else Response(a) for a in answers]
