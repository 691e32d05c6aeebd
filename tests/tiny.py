"""Tiny language models for fast tests: a ~300-token byte-level BPE and a 2-layer GPT-2.

``save_tiny_lm(folder)`` writes a model and tokenizer (with a chat template) that
``hf:<folder>`` loads in well under a second; the weights are random but seeded.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

EOS = "<|endoftext|>"
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
CORPUS = [
    "Question: What is the capital of France?\nAnswer: Paris",
    "Question: Which option is right? A B C D\nAnswer: A",
    "The correct answer is option: B. The correct answer is option: C.",
    "<|user|>Hello there\n<|assistant|>Hi! How can I help you today?",
    "A quick brown fox jumps over the lazy dog. Options: A, B, C, D.",
]


def tiny_tokenizer(vocab_size: int = 300, corpus: list[str] = CORPUS) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained in-process on ``corpus``, with EOS/pad and a chat template."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(corpus * 4, trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=EOS, pad_token=EOS)
    tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny_lm(tok: PreTrainedTokenizerFast, seed: int = 0) -> GPT2LMHeadModel:
    """A random GPT-2 (2 layers, width 32, 128 positions) for ``tok``, initialised from ``seed``."""
    eos = tok.eos_token_id
    config = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=128,
                        bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return GPT2LMHeadModel(config).eval()


def save_tiny_lm(folder: Path, seed: int = 0) -> Path:
    """Write a tiny model + tokenizer into ``folder`` (created) and return it."""
    folder = Path(folder)
    tok = tiny_tokenizer()
    model = tiny_lm(tok, seed)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
