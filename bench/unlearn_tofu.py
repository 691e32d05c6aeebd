"""TOFU comparison: ECO vs gradient ascent vs no unlearning, against a retain-only model.

Data: ``../shared/data/tofu`` forget300 / retain300 (15 fictitious authors each, 20 questions
per author, question + answer only). TOFU's truth ratio needs wrong ("perturbed") answers, which
these files lack, so the script writes a multiple-choice form first: each question's 3 wrong
options are the answers to the 3 most similar questions (TF-IDF over questions with the author's
name masked) about *other* authors of the same file, with that author's name (full, first and
last word) replaced by this question's author's name (the name found as the capitalised span
common to a block's 20 questions and answers). So a wrong option reads like a fact about the
right author and only knowledge of the facts tells them apart. The right option stands in for
TOFU's paraphrased answer (see ``bbzo.unlearn.metrics``).

Models: SmolLM2-135M does not fit: one AdamW step on a batch of 16 pairs took 101 s (one
thread, load average 22 from other work), about an hour per epoch of the 600 pairs, and TOFU
fine-tunes for 5 epochs, twice. A small Llama with SmolLM2's tokenizer is slow too: its
49,152-token output layer makes a step 4.5 s at width 128, 2 layers, against about 1 s with the
4,096-token vocabulary below (similar load). So both models are a small Llama built from a
config (``--layers`` 2, ``--width`` 128, 4 heads, about 1M parameters) with a ``--vocab``
4,096-token byte-level BPE trained in-process on the TOFU questions and answers
(``tests/tiny.py``'s ``tiny_tokenizer``), trained from the same seeded initialisation on
``Question: q\\nAnswer: a<eos>`` (loss on the answer tokens, AdamW, linear decay): the **full**
model on forget + retain, the **retain** reference on retain only, ``--epochs`` each.
``--quick``: vocabulary 512, width 32, 40 questions per file, 3 epochs.

Then, all evaluated on the held-out halves that ``fit_guard`` leaves out (seeded):

- **ECO** on the full model: ``fit_guard`` (TF-IDF classifier at 5 % false positives, Gaussian
  noise on every embedding dimension of every prompt token but the last, ZO strength search on
  the fit half matching the retain model's forget accuracy) and ``evaluate_guard(...,
  metrics="tofu", reference=retain model)``; its "before" figures are the **full model
  untouched**;
- **gradient ascent** (TOFU's baseline): the full model after ``--ga-steps`` AdamW steps that
  raise the loss on the fit half of the forget set;
- the **retain** model itself (forget quality 1 by definition; its utility for comparison).

Reported per method: forget quality (KS p-value between its truth ratios and the retain model's
on the held-out forget half), model utility (harmonic mean of probability, ROUGE-L and truth-
ratio statistic on the held-out retain half: TOFU also averages in real-authors and world-facts
sets, which a model trained from scratch cannot answer, so they are left out), forget and retain
accuracy. Prints a table; writes JSON to ``bench/out/``.

    nice -n 10 python bench/unlearn_tofu.py [--quick] [--epochs 10] [--ga-steps 10] [--threads 1]
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from sklearn.feature_extraction.text import TfidfVectorizer
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.utils import logging as hf_logging

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from tiny import tiny_tokenizer  # noqa: E402

from bbzo.attacks.seca.objective import OPTION_PROMPT  # noqa: E402
from bbzo.attacks.seca.questions import Question, load_questions  # noqa: E402
from bbzo.blackbox.query.layer import QueryLayer  # noqa: E402
from bbzo.blackbox.targets.hf import HFTarget  # noqa: E402
from bbzo.unlearn.corruptions import Corruption  # noqa: E402
from bbzo.unlearn.evaluate import score  # noqa: E402
from bbzo.unlearn.metrics import tofu_report  # noqa: E402
from bbzo.unlearn.run import HELDOUT, evaluate_guard, fit_guard  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "tofu"
BLOCK = 20  # questions per author in the TOFU files
WRONG = 3  # wrong options per question
NAME = re.compile(r"[A-Z][\w'-]*(?:\s+[A-Z][\w'-]*)+")


# ---- data -------------------------------------------------------------------------------

def author_names(rows: Sequence[dict]) -> list[str]:
    """Per block of ``BLOCK`` rows, the capitalised span found in most of its texts."""
    if len(rows) % BLOCK:
        raise SystemExit(f"expected blocks of {BLOCK} questions per author, got {len(rows)} rows")
    names = []
    for lo in range(0, len(rows), BLOCK):
        counts: collections.Counter = collections.Counter()
        for r in rows[lo:lo + BLOCK]:
            counts.update({re.sub(r"'s?$", "", m) for m in
                           NAME.findall(r["question"] + " " + r["answer"])})
        names.append(counts.most_common(1)[0][0])
    return names


def swap_name(text: str, old: str, new: str) -> str:
    """``text`` with the full name ``old``, then its first and last words, replaced by ``new``'s
    full name, first and last words."""
    o, n = old.split(), new.split()
    for a, b in ((old, new), (o[0], n[0]), (o[-1], n[-1])):
        text = re.sub(rf"\b{re.escape(a)}\b", b, text)
    return text


def multiple_choice(rows: Sequence[dict]) -> list[dict]:
    """TOFU records with ``perturbed_answer``: see the module doc."""
    names = author_names(rows)
    author = [i // BLOCK for i in range(len(rows))]
    masked = [swap_name(r["question"], names[a], "Author Name")
              for r, a in zip(rows, author, strict=True)]
    tfidf = TfidfVectorizer().fit_transform(masked)
    similar = (tfidf @ tfidf.T).toarray()
    records = []
    for i, r in enumerate(rows):
        wrong: list[str] = []
        for j in np.argsort(-similar[i], kind="stable"):
            if author[j] == author[i]:
                continue
            option = swap_name(rows[j]["answer"], names[author[j]], names[author[i]])
            if option != r["answer"] and option not in wrong:
                wrong.append(option)
            if len(wrong) == WRONG:
                break
        records.append({"id": f"q{i}", "question": r["question"], "answer": r["answer"],
                        "perturbed_answer": wrong})
    return records


def write_jsonl(path: Path, records: Sequence[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


# ---- fine-tuning ------------------------------------------------------------------------

def encode(tok, questions: Sequence[Question]) -> list[tuple[list[int], int]]:
    """Token ids of ``Question: q\\nAnswer: a<eos>`` (as ``option_loglik`` tokenises the prompt and
    the option) and where the answer starts."""
    rows = []
    for q in questions:
        prompt = tok.encode(OPTION_PROMPT.format(question=q.question))
        answer = tok.encode(" " + q.choices[q.answer], add_special_tokens=False)
        rows.append((prompt + answer + [tok.eos_token_id], len(prompt)))
    return rows


def answer_loss(model: LlamaForCausalLM, batch: Sequence[tuple[list[int], int]],
                pad: int) -> torch.Tensor:
    """Mean cross-entropy of the answer tokens (logits computed at those positions only)."""
    width = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), width), pad)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    where = torch.zeros((len(batch), width), dtype=torch.bool)  # position predicts an answer
    for i, (row, start) in enumerate(batch):
        ids[i, :len(row)] = torch.tensor(row)
        mask[i, :len(row)] = 1
        where[i, start - 1:len(row) - 1] = True
    hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
    logits = model.lm_head(hidden[where])
    targets = torch.roll(ids, -1, dims=1)[where]
    return torch.nn.functional.cross_entropy(logits, targets)


def train(model: LlamaForCausalLM, rows: Sequence[tuple[list[int], int]], *, steps: int,
          lr: float, batch: int, pad: int, seed: int, ascent: bool = False) -> list[float]:
    """``steps`` AdamW steps on shuffled batches of ``rows`` (gradient ascent when ``ascent``);
    the losses."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    rng = np.random.default_rng(seed)
    order: list[int] = []
    losses = []
    for step in range(steps):
        if len(order) < batch:
            order += rng.permutation(len(rows)).tolist()
        chosen, order = order[:batch], order[batch:]
        loss = answer_loss(model, [rows[i] for i in chosen], pad)
        ((-loss) if ascent else loss).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if not ascent:  # linear decay to 0 for fine-tuning
            for g in opt.param_groups:
                g["lr"] = lr * (1 - (step + 1) / steps)
        opt.zero_grad()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


def new_model(tok, width: int, layers: int, seed: int) -> LlamaForCausalLM:
    config = LlamaConfig(vocab_size=len(tok), hidden_size=width, intermediate_size=4 * width,
                         num_hidden_layers=layers, num_attention_heads=4,
                         num_key_value_heads=4, max_position_embeddings=512,
                         tie_word_embeddings=True, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def save(model: LlamaForCausalLM, tok, folder: Path) -> str:
    """Write model and tokenizer into ``folder``; the folder as ``HFTarget`` takes it."""
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


# ---- the run ----------------------------------------------------------------------------

def figures_row(figures: dict, suffix: str = "") -> dict:
    keys = ("forget_quality", "model_utility", "forget_accuracy", "retain_accuracy",
            "forget_truth_ratio", "forget_rouge_l", "retain_rouge_l", "retain_probability")
    return {k: figures.get(f"{k}{suffix}") for k in keys}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, 40 questions a file")
    parser.add_argument("--questions", type=int, default=None, help="per file (default all)")
    parser.add_argument("--epochs", type=int, default=None, help="fine-tuning epochs")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--ga-steps", type=int, default=10)
    parser.add_argument("--ga-lr", type=float, default=2e-4)
    parser.add_argument("--evaluations", type=int, default=8, help="ECO strength search")
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: on a shared 2-core machine 2 threads ran 9x "
                             "slower per step than 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None, help="keep models and runs here")
    args = parser.parse_args()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    n = args.questions or (2 * BLOCK if args.quick else None)
    epochs = args.epochs or (3 if args.quick else 10)
    width, layers = args.width or (32 if args.quick else 128), args.layers
    vocab = args.vocab or (512 if args.quick else 4096)
    torch.manual_seed(args.seed)
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        files = {}
        for part in ("forget", "retain"):
            rows = [json.loads(line) for line in (DATA / f"{part}300.jsonl").open()]
            files[part] = write_jsonl(work / f"{part}.jsonl", multiple_choice(rows)[:n])
        forget = load_questions(files["forget"], seed=args.seed)
        retain = load_questions(files["retain"], seed=args.seed)
        tok = tiny_tokenizer(vocab, [f"{OPTION_PROMPT.format(question=q.question)} {c}"
                                     for q in forget + retain for c in q.choices])
        pad = tok.pad_token_id
        data = {"full": encode(tok, forget + retain), "retain": encode(tok, retain)}
        spec, timing, losses = {}, {}, {}
        for name, rows in data.items():
            start = time.perf_counter()
            model = new_model(tok, width, layers, args.seed)
            steps = epochs * -(-len(rows) // args.batch)
            losses[name] = train(model, rows, steps=steps, lr=args.lr, batch=args.batch,
                                 pad=pad, seed=args.seed)
            spec[name] = save(model, tok, work / f"model-{name}")
            timing[f"train_{name}_s"] = time.perf_counter() - start
            print(f"trained {name}: {steps} steps, loss {losses[name][0]:.2f} -> "
                  f"{np.mean(losses[name][-5:]):.2f}, {timing[f'train_{name}_s']:.0f} s",
                  flush=True)
        full, reference = HFTarget(spec["full"], device="cpu"), HFTarget(spec["retain"],
                                                                           device="cpu")
        start = time.perf_counter()
        ref_accuracy = score(QueryLayer(reference), forget).accuracy
        fit_guard(full, files["forget"], files["retain"], work / "eco", target_fpr=0.05,
                  corruption=Corruption("noise_first_k", None, args.seed),
                  evaluations=args.evaluations, reference=ref_accuracy, seed=args.seed)
        eco = evaluate_guard(work / "eco", work / "eco" / HELDOUT["forget"],
                             work / "eco" / HELDOUT["retain"], work / "eco-eval", model=full,
                             metrics="tofu", reference=reference, seed=args.seed)
        timing["eco_s"] = time.perf_counter() - start
        held = {part: load_questions(work / "eco" / HELDOUT[part], seed=args.seed)
                for part in ("forget", "retain")}
        held_ids = {q.id for q in held["forget"]}
        ratios = json.loads((work / "eco-eval" / "tofu.json").read_text())
        ref_ratios = ratios["forget_truth_ratios"]["reference"]

        start = time.perf_counter()
        model = LlamaForCausalLM.from_pretrained(spec["full"])
        ga_losses = train(model, encode(tok, [q for q in forget if q.id not in held_ids]),
                          steps=args.ga_steps, lr=args.ga_lr, batch=args.batch, pad=pad,
                          seed=args.seed, ascent=True)
        ga_spec = save(model, tok, work / "model-ga")
        ga, _ = tofu_report(QueryLayer(HFTarget(ga_spec, device="cpu")), held,
                            reference=ref_ratios)
        timing["gradient_ascent_s"] = time.perf_counter() - start
        retain_fig, _ = tofu_report(QueryLayer(reference), held, reference=ref_ratios)

    rows = {"full model (no unlearning)": figures_row(eco, "_before"),
            "ECO on the full model": figures_row(eco),
            f"gradient ascent ({args.ga_steps} steps)": figures_row(ga),
            "retain model (reference)": figures_row(retain_fig)}
    result = {"quick": args.quick, "questions_per_file": len(forget),
              "heldout": {k: len(v) for k, v in held.items()}, "epochs": epochs,
              "model": {"width": width, "layers": layers, "vocab": len(tok),
                        "threads": args.threads,
                        "parameters": sum(p.numel() for p in model.parameters())},
              "train_final_loss": {k: float(np.mean(v[-5:])) for k, v in losses.items()},
              "ga_loss": [ga_losses[0], ga_losses[-1]], "retain_forget_accuracy": ref_accuracy,
              "eco": {k: eco[k] for k in ("strength", "classifier_fpr", "classifier_fnr",
                                          "zo_queries", "zo_evaluations")},
              "rows": rows, "timing_s": {**timing, "total": time.perf_counter() - began}}
    cols = list(next(iter(rows.values())))
    print("| method | " + " | ".join(cols) + " |")
    print("| --- " * (len(cols) + 1) + "|")
    for name, row in rows.items():
        print(f"| {name} | " + " | ".join("–" if row[c] is None else f"{row[c]:.3g}"
                                          for c in cols) + " |")
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1))
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"unlearn_tofu{'_quick' if args.quick else ''}.json").write_text(
        json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
