"""Channel-pruning benchmark on the real SmolLM2-135M (``python bench/channels.py``; ~3-6 min on a laptop CPU).

For each ratio: iterative pruning (hybrid wiki+code+news calibration, few samples, T=2), per-domain
held-out perplexity before/after (small token budget), parameters, and measured prefill/decode throughput
of the dense and pruned model, compared with the FLOP-ideal speedup
(FLOPs/token = 2 × decoder matmul weights + 4 × q-heads × head_dim × context per layer + 2 × LM head).

Calibration, steps, evaluation budget and window default to ``ChannelConfig``'s (the product's), the pruning
ratios to ``ChannelConfig.ratio`` and one more (``--ratios``). With ``--write`` (only then) it replaces
"## Channel pruning (bench/channels.py)" in ``docs/benchmarks.md``. Last line: ``ratio=<prefill speedup ÷
FLOP-ideal at the first ratio>``; the load average is printed.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import analysis.channels as CH  # noqa: E402
from analysis.models.loading import load_model, wrap_model  # noqa: E402

SECTION = "## Channel pruning (bench/channels.py)"


def measure(lm, prompt_len: int, new_tokens: int, repeats: int) -> dict:
    """Best-of-``repeats`` throughput (after one warm-up): prefill of a ``prompt_len`` prompt with the KV
    cache on, then ``new_tokens`` greedy decode steps. Best-of (not median) because this bench often runs
    on a shared, oversubscribed CPU where the median mostly measures other processes."""
    model = lm.model
    vocab = model.get_input_embeddings().num_embeddings
    ids = torch.randint(0, vocab, (1, prompt_len), generator=torch.Generator().manual_seed(0))
    pre, dec = [], []
    with torch.inference_mode():
        for r in range(repeats + 1):
            t0 = time.perf_counter()
            out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
            t1 = time.perf_counter()
            cache, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
            for _ in range(new_tokens):
                out = model(input_ids=nxt, past_key_values=cache, use_cache=True)
                cache, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
            t2 = time.perf_counter()
            if r:
                pre.append(prompt_len / (t1 - t0))
                dec.append(new_tokens / (t2 - t1))
    return {"prefill": max(pre), "decode": max(dec)}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} logical CPUs (shared with other jobs; torch threads "
            f"{torch.get_num_threads()} for calibration and perplexity), "
            f"Python {platform.python_version()}, torch {torch.__version__}")


def main(argv=None) -> int:
    from bench.common import app_defaults, loadavg, print_ratio

    cc = CH.ChannelConfig()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=app_defaults()[0]["spec"])
    ap.add_argument("--ratios", default=",".join(f"{r:g}" for r in dict.fromkeys((cc.ratio, 0.5))))
    ap.add_argument("--steps", type=int, default=cc.steps)
    ap.add_argument("--samples", type=int, default=cc.n_samples)
    ap.add_argument("--seq-len", type=int, default=cc.seq_len)
    ap.add_argument("--domains", default=",".join(f"{k}:{v:g}" for k, v in cc.domains.items()))
    ap.add_argument("--eval-tokens", type=int, default=cc.eval_tokens)
    ap.add_argument("--eval-window", type=int, default=cc.eval_window)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the latency measurement")
    ap.add_argument("--ablation", action="store_true",
                    help="also hybrid vs single-domain vs one-shot at the first ratio")
    ap.add_argument("--write", action="store_true", help="replace this bench's section of docs/benchmarks.md")
    ap.add_argument("--json", default=None, help="also write the raw results here")
    args = ap.parse_args(argv)
    load0 = loadavg()

    t_all = time.perf_counter()
    lm = load_model(args.model, device="cpu")
    print(f"loaded {args.model} in {lm.load_seconds:.1f} s", flush=True)
    base_cfg = CH.ChannelConfig(domains=args.domains, n_samples=args.samples, seq_len=args.seq_len,
                                steps=args.steps, eval_tokens=args.eval_tokens, eval_window=args.eval_window).validated()
    doms = list(base_cfg.domains)
    tokens = CH.build_hybrid_calibration(lm.tokenizer, base_cfg.domains, args.samples, args.seq_len, base_cfg.seed)
    dense_ppl = CH.evaluate_domains(lm, doms, args.eval_tokens, args.eval_window)
    ctx_pre = (args.prompt_len + 1) // 2
    ctx_dec = args.prompt_len + args.new_tokens // 2
    f_dense = (CH.flops_per_token(lm.model, ctx_pre)["total"], CH.flops_per_token(lm.model, ctx_dec)["total"])
    p_dense = CH.param_counts(lm.model)
    rows = []
    for r in [float(x) for x in args.ratios.split(",")]:
        t0 = time.perf_counter()
        res = CH.iterative_channel_prune(lm, base_cfg, tokens, ratio=r)
        prune_s = time.perf_counter() - t0
        pruned = wrap_model(res.model, lm.tokenizer, name=f"{args.model}-r{r}")
        ppl = CH.evaluate_domains(pruned, doms, args.eval_tokens, args.eval_window)
        dense_lat, pruned_lat = [], []
        threads = torch.get_num_threads()
        torch.set_num_threads(args.threads)
        for _ in range(2):                      # interleaved: both see the same machine load
            dense_lat.append(measure(lm, args.prompt_len, args.new_tokens, args.repeats))
            pruned_lat.append(measure(pruned, args.prompt_len, args.new_tokens, args.repeats))
        torch.set_num_threads(threads)
        f_p = (CH.flops_per_token(res.model, ctx_pre)["total"], CH.flops_per_token(res.model, ctx_dec)["total"])
        row = {"ratio": r, "ratio_reached": res.report["final"]["ratio_reached"],
               "width": res.report["final"]["widths"][0], "prune_seconds": prune_s,
               "params": res.report["final"]["params"], "params_dense": p_dense,
               "ppl": {d: (dense_ppl[d]["perplexity"], ppl[d]["perplexity"]) for d in doms}}
        for k, i in (("prefill", 0), ("decode", 1)):
            d = max(x[k] for x in dense_lat)
            p = max(x[k] for x in pruned_lat)
            ideal = f_dense[i] / f_p[i]
            row[k] = {"dense_tok_s": d, "pruned_tok_s": p, "speedup": p / d, "ideal": ideal,
                      "efficiency": (p / d) / ideal}
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k in ("ratio", "width", "prefill", "decode", "ppl")}),
              flush=True)
        del pruned, res
    ablation = None
    if args.ablation:
        ablation = CH.run_ablation(lm, base_cfg, ratio=float(args.ratios.split(",")[0]))
    total_s = time.perf_counter() - t_all

    text = render(args, rows, doms, ablation, total_s, base_cfg)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "ablation": ablation}, indent=1))
    print(f"load average (1/5/15 min) before {load0}, after {loadavg()}")
    if args.write:
        write_section(ROOT / "docs" / "benchmarks.md", text)
    else:
        print("(not written to docs/benchmarks.md; pass --write to replace its section)", file=sys.stderr)
    print_ratio(rows[0]["prefill"]["efficiency"] if rows else float("nan"))
    return 0


def render(args, rows, doms, ablation, total_s, cfg) -> str:
    date = datetime.date.today().isoformat()
    out = [SECTION, "",
           f"Run {date} on {machine()}; total runtime {total_s:.0f} s. Model `{args.model}` fp32 on CPU. "
           f"Calibration: hybrid {args.domains}, {args.samples} × {args.seq_len} tokens, T = {args.steps}, "
           f"method {cfg.method}, aggregation {cfg.domain_agg}, uniform allocation, widths multiple of "
           f"{cfg.multiple_of}, no bias compensation. Perplexity: first {args.eval_tokens} held-out tokens of "
           f"each domain's eval split, disjoint {args.eval_window}-token windows. Latency: batch 1, prompt {args.prompt_len} "
           f"tokens (prefill tok/s) then {args.new_tokens} greedy decode steps (decode tok/s), KV cache on, "
           f"{args.threads} torch thread(s), best of {args.repeats} runs × 2 interleaved rounds of dense and pruned "
           f"(best-of because the CPU is shared; load average at the end {os.getloadavg()[0]:.1f}). "
           f"FLOP-ideal speedup = dense / pruned FLOPs per token (2 × decoder matmul weights "
           f"+ 4 × q-heads × head_dim × context + 2 × LM head; "
           f"context {(args.prompt_len + 1) // 2} for prefill, {args.prompt_len + args.new_tokens // 2} for decode).",
           "",
           "| ratio | MLP width | params (M) | non-emb. (M) | prefill speedup | ideal | efficiency | decode speedup "
           "| ideal | efficiency | prune time (s) |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['ratio']:.2f} | {r['width']} | {r['params']['total'] / 1e6:.1f} "
                   f"(dense {r['params_dense']['total'] / 1e6:.1f}) | {r['params']['non_embedding'] / 1e6:.1f} "
                   f"(dense {r['params_dense']['non_embedding'] / 1e6:.1f}) | "
                   f"{r['prefill']['speedup']:.2f}× | {r['prefill']['ideal']:.2f}× | "
                   f"{r['prefill']['efficiency']:.0%} | "
                   f"{r['decode']['speedup']:.2f}× | {r['decode']['ideal']:.2f}× | {r['decode']['efficiency']:.0%} | "
                   f"{r['prune_seconds']:.0f} |")
    out += ["", "Throughput (tokens/s, dense → pruned): " + "; ".join(
        f"r={r['ratio']:.2f}: prefill {r['prefill']['dense_tok_s']:.0f} → {r['prefill']['pruned_tok_s']:.0f}, "
        f"decode {r['decode']['dense_tok_s']:.1f} → {r['decode']['pruned_tok_s']:.1f}" for r in rows) + ".", "",
            "Per-domain perplexity (held-out):", "",
            "| domain | dense | " + " | ".join(f"r={r['ratio']:.2f}" for r in rows) + " |",
            "|---|---|" + "---|" * len(rows)]
    for d in doms:
        out.append(f"| {d} | {rows[0]['ppl'][d][0]:.2f} | " + " | ".join(f"{r['ppl'][d][1]:.2f}" for r in rows) + " |")
    if ablation:
        out += ["", f"Ablation at r = {ablation['ratio']:.2f} (same samples per variant; perplexity per eval domain):",
                "", "| variant | " + " | ".join(ablation["domains"]) + " | mean log-ppl |",
                "|---|" + "---|" * (len(ablation["domains"]) + 1),
                "| dense | " + " | ".join(f"{ablation['dense'][d]:.2f}" for d in ablation["domains"]) + " | |"]
        for row in ablation["rows"]:
            out.append(f"| {row['variant']} (T={row['steps']}) | "
                       + " | ".join(f"{row['perplexity'][d]:.2f}" for d in ablation["domains"])
                       + f" | {row['mean_log_ppl']:.3f} |")
    out += ["", "Reproduce: `python bench/channels.py" + (" --ablation" if ablation else "") + "`.", ""]
    return "\n".join(out)


def write_section(path: Path, text: str) -> None:
    """Replace (or append) only this benchmark's section of docs/benchmarks.md."""
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.read_text() if path.exists() else "# Benchmarks\n\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    new = pattern.sub(lambda m: text.rstrip() + "\n\n", old) if pattern.search(old) else \
        old.rstrip() + "\n\n" + text.rstrip() + "\n"
    path.write_text(new)


if __name__ == "__main__":
    raise SystemExit(main())
