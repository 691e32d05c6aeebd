"""SECA benchmark: scoring one search step's candidates in one query-layer submit vs one submit
per candidate, measured side by side in this one run.

For each of the first ``--questions`` built-in questions, the proposer (the same model, as in
``bbzo attack seca``) writes the N·M rewrites of one search step from the original (not timed).
The objective then scores them twice through a ``QueryLayer`` without a ledger, so nothing is
answered from a cache: once as SECA does (all N·M texts in ONE submit; the local model batches
them, ``max_batch`` 16 as in ``SecaConfig.local_batch``) and once with one submit per text.
Reported per objective (``option``: 4 option log-likelihoods per text; ``letter``: the letter
distribution after the paper's prompt): wall seconds of each (best of ``--repeat``), their
ratio, and the largest difference between the two ways' log-probabilities (float rounding of
padded batches).

    python bench/seca.py [--threads 1] [--questions 3] [--repeat 3] [--model tiny]

``--compare`` instead runs SECA (its default hybrid proposer on the bundled models) and the
random feasible-rephrasing baseline matched to it (the same texts scored per question), both
resumable, on one question set, then compares them on the questions both runs finished: ASR,
target queries per question and per success, mean p(target) before -> after, a paired count of
the questions where SECA's final p(target) is above / equal to / below random's, and every
success (original -> rewrite, p before -> after). ``--report-only`` compares existing run
folders (``--seca-run``, ``--random-run``) without running anything.

    python bench/seca.py --compare --set builtin --limit 20 --iterations 6 --runs DIR [--seed 1]
    python bench/seca.py --compare --set PATH.jsonl --limit 40 --iterations 6 --runs DIR
    python bench/seca.py --compare --report-only --seca-run DIR --random-run DIR

Each comparison also counts, per eligible question, which method attacked it (both, SECA only,
random only, neither) and gives two-sided exact tests of "equally good": McNemar's on the
questions only one method attacked and the sign test on final p(target). ``--pool`` adds up
the counts of several comparisons (seeds, question sets) and tests the sums.

    python bench/seca.py --pool bench/results/seca/compare-{builtin-50,builtin-50-seed1}.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from seca_support import save_roomy_lm  # noqa: E402

from bbzo.attacks.seca.objective import make_objective  # noqa: E402
from bbzo.attacks.seca.proposer import LLMProposer  # noqa: E402
from bbzo.attacks.seca.questions import load_questions  # noqa: E402
from bbzo.attacks.seca.run import SecaConfig, run_seca, summarize  # noqa: E402
from bbzo.blackbox.query.layer import QueryLayer  # noqa: E402
from bbzo.blackbox.targets import models  # noqa: E402
from bbzo.blackbox.targets.hf import HFTarget  # noqa: E402
from bbzo.runs.driver import is_error, latest_records  # noqa: E402
from bbzo.runs.folder import read_jsonl_file  # noqa: E402

LOCAL_BATCH = 16


def best_time(fn, repeat: int) -> tuple[float, object]:
    """Best-of-``repeat`` wall seconds of ``fn()`` and its last result."""
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def bench(model: str, n_questions: int, parents: int, candidates: int,
          repeat: int) -> dict:
    target = HFTarget(model, device="cpu", max_batch=LOCAL_BATCH)
    proposer = LLMProposer(QueryLayer(target), seed=0, fmt="completion", max_tokens=32)
    steps = []
    for q in load_questions(None, seed=0, limit=n_questions):
        texts = [t for t in dict.fromkeys(proposer.propose(q, [q.question] * parents,
                                                           candidates, 0)) if t]
        steps.append((q, texts))
    out = {"model": target.id, "questions": n_questions, "parents": parents,
           "candidates": candidates, "texts": sum(len(t) for _, t in steps), "objectives": {}}
    for name in ("option", "letter"):
        objective = make_objective(name, QueryLayer(target))  # no ledger: nothing cached

        def batched(obj=objective):
            return [obj.evaluate(q, texts) for q, texts in steps]

        def one_by_one(obj=objective):
            return [np.concatenate([obj.evaluate(q, [t]) for t in texts]) for q, texts in steps]

        batched_s, a = best_time(batched, repeat)
        single_s, b = best_time(one_by_one, repeat)
        out["objectives"][name] = {
            "batched_s": batched_s, "single_s": single_s, "speedup": single_s / batched_s,
            "max_abs_logp_diff": float(max(np.abs(x - y).max() for x, y in zip(a, b,
                                                                             strict=True)))}
    return out


def finished(folder: Path) -> dict[str, dict]:
    """The question records of a run folder by id (errors left out)."""
    return {r["id"]: r for r in latest_records(read_jsonl_file(folder / "results.jsonl"))
            if not is_error(r)}


def run_config(folder: Path) -> SecaConfig:
    """The ``SecaConfig`` a run folder was made with (its ``config.json``)."""
    saved = json.loads((folder / "config.json").read_text())
    return SecaConfig(**saved["options"], seed=saved["seed"])


def compare(seca_run: Path, random_run: Path) -> dict:
    """SECA against its matched random baseline on the questions both runs finished."""
    seca, rand = finished(seca_run), finished(random_run)
    ids = [i for i in seca if i in rand]
    out = {"questions": len(ids), "seca_run": str(seca_run), "random_run": str(random_run)}
    for name, folder, records in (("seca", seca_run, seca), ("random", random_run, rand)):
        mine = [records[i] for i in ids]
        summary = summarize(mine, run_config(folder))
        out[name] = {k: summary[k] for k in (
            "eligible", "attacked", "asr", "objective", "iterations",
            "mean_target_queries_per_question", "mean_target_queries_per_success",
            "mean_p_target_before", "mean_p_target_after", "final_rewrites",
            "final_equivalence_error_rate", "final_coherence_error_rate", "successes")}
        eligible = [r for r in mine if r["eligible"]]
        out[name]["scored_texts"] = sum(r["proposals"] - r["unusable_proposals"] - r["unscored"]
                                        for r in eligible)
        out[name]["unusable_share"] = (sum(r["unusable_proposals"] for r in eligible)
                                       / max(1, sum(r["proposals"] for r in eligible)))
        steps = [t for r in eligible for t in r["trace"]]
        out[name]["feasible_improvers_step_1_later"] = [
            sum(t["feasible"] for t in steps if t["step"] == 1),
            sum(t["feasible"] for t in steps if t["step"] > 1)]
    eligible = [i for i in ids if seca[i]["eligible"]]
    pairs = [(seca[i]["p_target_after"], rand[i]["p_target_after"]) for i in eligible]
    out["paired_p_target_after"] = {"seca_above": sum(a > b for a, b in pairs),
                                    "equal": sum(a == b for a, b in pairs),
                                    "seca_below": sum(a < b for a, b in pairs)}
    wins = [(bool(seca[i]["success"]), bool(rand[i]["success"])) for i in eligible]
    out["paired_success"] = {"both": sum(a and b for a, b in wins),
                             "seca_only": sum(a and not b for a, b in wins),
                             "random_only": sum(b and not a for a, b in wins),
                             "neither": sum(not (a or b) for a, b in wins)}
    out["tests"] = paired_tests(out["paired_success"], out["paired_p_target_after"])
    return out


def paired_tests(success: dict, p_target: dict) -> dict:
    """Two-sided exact tests that SECA and random do equally well, per eligible question:
    McNemar's on the questions only one of them attacked, the sign test on the questions whose
    final p(target) differs (both binomial tests at 1/2 on the discordant pairs)."""
    from scipy.stats import binomtest

    def p_value(k: int, n: int) -> float | None:
        return None if n == 0 else float(binomtest(k, n, 0.5).pvalue)

    return {"mcnemar_p": p_value(success["seca_only"],
                                 success["seca_only"] + success["random_only"]),
            "sign_test_p": p_value(p_target["seca_above"],
                                   p_target["seca_above"] + p_target["seca_below"])}


def pool(results: list[dict]) -> dict:
    """Comparisons (``compare`` outputs: other seeds or question sets) added up: eligible and
    attacked questions, the paired counts, and the tests on the sums."""
    out: dict = {"runs": [r["seca_run"] for r in results]}
    for name in ("seca", "random"):
        out[name] = {k: sum(r[name][k] for r in results) for k in ("eligible", "attacked")}
        out[name]["asr"] = out[name]["attacked"] / max(1, out[name]["eligible"])
    for key in ("paired_success", "paired_p_target_after"):
        out[key] = {k: sum(r[key][k] for r in results) for k in results[0][key]}
    out["tests"] = paired_tests(out["paired_success"], out["paired_p_target_after"])
    return out


def print_comparison(result: dict) -> None:
    """The comparison as a markdown table and a success list."""
    s, r = result["seca"], result["random"]

    def fmt(x, spec=".3f"):
        return "—" if x is None else format(x, spec)

    rows = [("questions / eligible", f"{result['questions']} / {s['eligible']}",
             f"{result['questions']} / {r['eligible']}"),
            ("attacked (ASR)", f"{s['attacked']} / {s['eligible']} ({fmt(s['asr'], '.1%')})",
             f"{r['attacked']} / {r['eligible']} ({fmt(r['asr'], '.1%')})"),
            ("texts scored (target queries)", str(s["scored_texts"]), str(r["scored_texts"])),
            ("target queries per question / per success",
             f"{fmt(s['mean_target_queries_per_question'], '.1f')} / "
             f"{fmt(s['mean_target_queries_per_success'], '.1f')}",
             f"{fmt(r['mean_target_queries_per_question'], '.1f')} / "
             f"{fmt(r['mean_target_queries_per_success'], '.1f')}"),
            ("mean p(target) before -> after",
             f"{fmt(s['mean_p_target_before'])} -> {fmt(s['mean_p_target_after'])}",
             f"{fmt(r['mean_p_target_before'])} -> {fmt(r['mean_p_target_after'])}"),
            ("unusable proposals", fmt(s["unusable_share"], ".0%"),
             fmt(r["unusable_share"], ".0%")),
            ("feasible improvers in step 1 / later steps",
             "{} / {}".format(*s["feasible_improvers_step_1_later"]),
             "{} / {}".format(*r["feasible_improvers_step_1_later"])),
            ("final rewrites failing equivalence / coherence",
             f"{fmt(s['final_equivalence_error_rate'], '.0%')} / "
             f"{fmt(s['final_coherence_error_rate'], '.0%')}",
             f"{fmt(r['final_equivalence_error_rate'], '.0%')} / "
             f"{fmt(r['final_coherence_error_rate'], '.0%')}")]
    print("| | SECA | random baseline (same texts scored) |\n| --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print_paired(result)
    for name in ("seca", "random"):
        print(f"\n{name} successes ({len(result[name]['successes'])}):")
        for w in result[name]["successes"]:
            print(f"- {w['original']} -> {w['rewrite']} (p {w['p_target_before']:.3f} -> "
                  f"{w['p_target_after']:.3f})")


def print_paired(result: dict) -> None:
    """The per-question view of a comparison (or a pool of them) and its exact tests."""
    paired, wins = result["paired_p_target_after"], result["paired_success"]
    tests = {k: "—" if v is None else f"{v:.2f}" for k, v in result["tests"].items()}
    print(f"\nper eligible question: final p(target) SECA above random {paired['seca_above']}, "
          f"equal {paired['equal']}, below {paired['seca_below']} (sign test p = "
          f"{tests['sign_test_p']}); attacked by both {wins['both']}, SECA only "
          f"{wins['seca_only']}, random only {wins['random_only']}, neither {wins['neither']} "
          f"(McNemar p = {tests['mcnemar_p']})")


def main_pool(files: list[Path]) -> None:
    results = [json.loads(f.read_text()) for f in files]
    for f, r in zip(files, results, strict=True):
        if "paired_success" not in r:
            raise SystemExit(f"{f} has no paired counts (an older bench); rerun --compare "
                             f"--report-only on its two runs")
    result = pool(results)
    s, r = result["seca"], result["random"]
    print(f"pooled over {len(files)} comparisons: ASR SECA {s['attacked']} / {s['eligible']} "
          f"({s['asr']:.1%}), random {r['attacked']} / {r['eligible']} ({r['asr']:.1%})")
    print_paired(result)


def run_pair(questions: str | None, limit: int | None, iterations: int, runs: Path,
             name: str, seed: int = 0) -> tuple[Path, Path]:
    """SECA then its matched random baseline (both resumable) under ``runs``."""
    config = SecaConfig(questions=questions, limit=limit, iterations=iterations, seed=seed,
                        device="cpu")
    seca_run, random_run = runs / f"{name}-seca", runs / f"{name}-random"
    run_seca(config, out=seca_run, resume=True)
    run_seca(replace(config, baseline="random", match=str(seca_run)), out=random_run,
             resume=True)
    return seca_run, random_run


def main_compare(args: argparse.Namespace) -> None:
    if args.report_only:
        if args.seca_run is None or args.random_run is None:
            raise SystemExit("--report-only needs --seca-run and --random-run")
        seca_run, random_run = args.seca_run, args.random_run
    else:
        questions = None if args.set == "builtin" else args.set
        name = "builtin" if questions is None else Path(questions).stem
        seca_run, random_run = run_pair(questions, args.limit, args.iterations, args.runs, name,
                                        args.seed)
    result = compare(seca_run, random_run)
    print_comparison(result)
    out = random_run.parent / f"compare-{random_run.name}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=models.DEFAULT_LM,
                        help="alias or folder of a causal LM, or 'tiny' [default: %(default)s]")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--questions", type=int, default=3, help="built-in questions")
    parser.add_argument("--parents", type=int, default=3, help="N")
    parser.add_argument("--candidates", type=int, default=3, help="M")
    parser.add_argument("--repeat", type=int, default=3, help="timings per way (best kept)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument("--compare", action="store_true",
                        help="SECA against the matched random baseline (module doc)")
    parser.add_argument("--set", default="builtin",
                        help="--compare: 'builtin' or a question file [default: %(default)s]")
    parser.add_argument("--limit", type=int, default=None, help="--compare: first N questions")
    parser.add_argument("--iterations", type=int, default=30, help="--compare: search steps")
    parser.add_argument("--seed", type=int, default=0, help="--compare: seed of both runs")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "seca-compare",
                        help="--compare: folder of the two run folders")
    parser.add_argument("--report-only", action="store_true",
                        help="--compare: compare --seca-run and --random-run, run nothing")
    parser.add_argument("--seca-run", type=Path, default=None)
    parser.add_argument("--random-run", type=Path, default=None)
    parser.add_argument("--pool", type=Path, nargs="+", default=None, metavar="COMPARE_JSON",
                        help="add up compare-*.json files of --compare and test the sums")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.pool:
        main_pool(args.pool)
        return
    if args.compare:
        main_compare(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        model = str(save_roomy_lm(Path(tmp) / "tiny")) if args.model == "tiny" else args.model
        result = bench(model, args.questions, args.parents, args.candidates, args.repeat)
    command = (f"python bench/seca.py --threads {args.threads} --questions {args.questions} "
               f"--parents {args.parents} --candidates {args.candidates} --repeat "
               f"{args.repeat}" + (f" --model {args.model}"
                                   if args.model != models.DEFAULT_LM else ""))
    result.update({"threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                   "load_average": os.getloadavg(), "command": command})
    print(f"SECA candidate scoring on {result['model']}, CPU, {result['threads']} torch "
          f"thread(s): {result['texts']} rewrites of {args.questions} questions "
          f"(N={args.parents} x M={args.candidates} per step), best of {args.repeat}")
    for name, r in result["objectives"].items():
        print(f"    {name:6s} objective: one submit per step {r['batched_s']:.2f} s vs one per "
              f"candidate {r['single_s']:.2f} s -> {r['speedup']:.1f}x "
              f"(max |logp diff| {r['max_abs_logp_diff']:.1e})")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "seca.json").write_text(json.dumps(result, indent=2))
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end")
    print(f"wrote {args.out / 'seca.json'}")
    print(f"reproduce: {command}")


if __name__ == "__main__":
    main()
