"""Task accuracy after attention-block pruning: dense vs k = 4 and 8 attention blocks by EntroDrop, cosine and
random, on SmolLM2-135M and Qwen2.5-Coder-0.5B (CPU, fp32).

Tasks (all local, see analysis/tasks): cloze-wiki (first --cloze-limit items, acc and target-word perplexity),
math-champ (first --math-limit held-out problems, --math-fewshot examples, exact match), humaneval
(HumanEval/0 .. HumanEval/N-1 in file order, greedy, pass@1; executes code in the sandbox of analysis/tasks/sandbox.py). lm-eval seeds = --seed; random
criterion seed = 0. Calibration for the criteria: 16 wiki windows × 256 tokens (seed 0), Bucket estimator,
fixed protection. Writes one JSON line per (model, plan) to --out as it goes.

    .venv/bin/python bench/tasks.py [--models smollm2,qwen2.5-coder-0.5b] [--cloze-limit 50] [--math-limit 20]
                                    [--humaneval-limit 10] [--max-gen-toks 128] [--out bench-tasks.jsonl]
"""
from __future__ import annotations

import argparse
import gc
import json
import time

from common import analysis_config, app_defaults, calib_tokens, loadavg, machine, print_ratio

import torch
from analysis.score.criteria import select
from analysis.models.loading import load_model
from analysis.models.plan import Plan
from analysis.run import analyze
from analysis.tasks import TaskConfig, check_tasks, evaluate_tasks


def _fmt(m: dict | None, pct: bool = True) -> str:
    if not m or m["value"] is None:
        return "–"
    if not pct:
        return f"{m['value']:.1f}"
    se = f" ± {100 * m['stderr']:.0f}" if m["stderr"] is not None else ""
    return f"{100 * m['value']:.0f}{se}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="smollm2,qwen2.5-coder-0.5b")
    ap.add_argument("--ks", default="4,8")
    ap.add_argument("--criteria", default="entrodrop,cosine,random")
    ap.add_argument("--cloze-limit", type=int, default=30)
    ap.add_argument("--math-limit", type=int, default=10)
    ap.add_argument("--humaneval-limit", type=int, default=5)
    ap.add_argument("--max-gen-toks", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--math-fewshot", type=int, default=1, help="few-shot examples for math-champ (task default 3)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy shared CPU)")
    ap.add_argument("--no-dense", action="store_true", help="skip the dense row (e.g. a second process for k = 8)")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--out", default="bench-tasks.jsonl")
    ap.add_argument("--table", default=None, help="only print the table of these JSONL files (comma list)")
    args = ap.parse_args()
    if args.table:
        print_table([json.loads(line) for f in args.table.split(",") for line in open(f) if line.strip()])
        return
    torch.set_num_threads(args.threads)
    load0 = loadavg()
    print(machine(), f"| {args.threads} torch thread(s)", flush=True)
    _, data, _ = app_defaults()
    jobs = [("cloze-wiki", TaskConfig(limit=args.cloze_limit, seed=args.seed, batch_size=args.batch_size)),
            ("math-champ", TaskConfig(limit=args.math_limit, seed=args.seed, batch_size=args.batch_size,
                                      num_fewshot=args.math_fewshot)),
            ("humaneval", TaskConfig(limit=args.humaneval_limit, seed=args.seed, batch_size=args.batch_size,
                                     max_gen_toks=args.max_gen_toks, allow_code_execution=True))]
    jobs = [(t, c, check_tasks([t], c)) for t, c in jobs if c.limit > 0]
    table = []
    for name in args.models.split(","):
        lm = load_model(name, device="cpu", dtype="fp32")
        run = analyze(lm, calib_tokens(lm, data["n_samples"], data["seq_len"], seed=data["seed"]),
                      analysis_config(app=True, granularity="attention"))     # the product's analysis, attention drops
        plans = {} if args.no_dense else {"dense": Plan()}
        for k in map(int, args.ks.split(",")):  # k = 4 for every criterion first, then k = 8
            for c in args.criteria.split(","):
                sel = select(run, c, k, granularity="attention", **({"seed": 0} if c == "random" else {}))
                plans[f"{c} k={k}"] = Plan(drop_attn=sorted(sel.blocks))
        for label, plan in plans.items():
            t0 = time.perf_counter()
            row = {"model": name, "plan": label, "drop_attn": plan.drop_attn}
            for task, cfg, tm in jobs:
                row[task] = evaluate_tasks(lm, [task], plan, cfg, tm=tm)["tasks"][task]
            row["seconds"] = round(time.perf_counter() - t0, 1)
            table.append(row)
            with open(args.out, "a") as fh:
                fh.write(json.dumps(row) + "\n")
            print(json.dumps({k: row[k] for k in ("model", "plan", "seconds")}), flush=True)
        del lm, run
        gc.collect()
    print_table(table)
    print(f"load average (1/5/15 min) before {load0}, after {loadavg()}")
    # the first model's first pruned plan: cloze accuracy ÷ the dense model's
    first = [r for r in table if r["model"] == table[0]["model"]] if table else []
    acc = {r["plan"]: (((r.get("cloze-wiki") or {}).get("metrics") or {}).get("acc") or {}).get("value") for r in first}
    pruned = next((a for p, a in acc.items() if p != "dense"), None)
    print_ratio(pruned / acc["dense"] if acc.get("dense") and pruned is not None else float("nan"))


def print_table(table: list[dict]) -> None:
    seen: set = set()
    table = [r for r in table if (r["model"], r["plan"]) not in seen and not seen.add((r["model"], r["plan"]))]
    print("\n| model | plan (attention blocks dropped) | cloze-wiki acc % | cloze-wiki word ppl | math-champ EM % "
          "| HumanEval pass@1 % |")
    print("|---|---|---|---|---|---|")
    for r in table:
        cl = (r.get("cloze-wiki") or {}).get("metrics", {})
        print(f"| {r['model']} | {r['plan']} {r['drop_attn'] or ''} | {_fmt(cl.get('acc'))} | "
              f"{_fmt(cl.get('perplexity'), pct=False)} | "
              f"{_fmt((r.get('math-champ') or {}).get('metrics', {}).get('exact_match'))} | "
              f"{_fmt((r.get('humaneval') or {}).get('metrics', {}).get('pass@1'))} |")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
