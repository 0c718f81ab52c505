"""Arguments and helpers shared by several CLI commands."""
from __future__ import annotations

import argparse
import sys

from analysis.cli.argtypes import in_path

from analysis.data.windows import SampleConfig
from analysis.models.embedded import EMBEDDED
from analysis.settings import add_arguments, from_args


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default="smollm2", type=in_path,
                   help=f"embedded name ({', '.join(EMBEDDED)}), hub id, directory or .gguf")
    g.add_argument("--device", default="auto", help="auto (cuda → mps → cpu), cpu, cuda, cuda:N, mps")
    g.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="auto = bf16 where the hardware runs it natively (GPU, AVX512-BF16/AMX CPU), else fp32")
    g.add_argument("--device-map", default=None, help="accelerate device map, e.g. auto (multi-GPU / offload)")
    g.add_argument("--max-memory", default=None,
                   help="per-device budget for --device-map, e.g. 0=10GiB,cpu=4GiB; what does not fit is "
                        "offloaded to disk (implies --device-map auto)")
    g.add_argument("--offload-folder", default=None,
                   help="folder for disk-offloaded weights (default: a per-model folder in the model cache)")
    g.add_argument("--trust-remote-code", action="store_true",
                   help="run the checkpoint's own Python code (only for checkpoints you trust)")
    g.add_argument("--offline", action="store_true", help="never access the network")


def add_data_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_argument_group("calibration data (one of)")
    src = g.add_mutually_exclusive_group(required=required)
    src.add_argument("--corpus", help="built-in domain (wiki, news, code, docs, dialogue, math), a mix "
                                      "like wiki:1,code:1, or hub:NAME[/CONFIG]")
    src.add_argument("--text", type=in_path, help="text file: .txt, .jsonl, .csv or .parquet")
    src.add_argument("--tokens", type=in_path, help="token-id file (.npy or .pt, integer [N, T]) used as-is")
    g.add_argument("--text-field", default=None, help="column holding the text (jsonl/csv/parquet)")
    # --samples / --seq-len default to None: "the SampleConfig default" (128 / 256; all rows of a token file)
    add_arguments(g, SampleConfig, only=("n_samples", "seq_len", "mode"), defaults={"n_samples": None, "seq_len": None})
    g.add_argument("--split", choices=["calib", "eval", "all"], default="calib")
    add_arguments(g, SampleConfig, only=("seed",))


def load_lm(args, progress=None):
    from analysis.models.loading import load_model

    return load_model(args.model, device=args.device, dtype=args.dtype, trust_remote_code=args.trust_remote_code,
                      offline=True if args.offline else None, device_map=args.device_map, progress=progress,
                      max_memory=getattr(args, "max_memory", None), offload_folder=getattr(args, "offload_folder", None))


def corpus_from_args(args):
    """The Corpus named by --corpus / --text (single source), or None for a mix or token file."""
    from analysis.data.domains import load_corpus
    from analysis.data.files import load_text_file
    from analysis.data.hub import load_hub_dataset

    if getattr(args, "text", None):
        return load_text_file(args.text, text_field=args.text_field)
    spec = getattr(args, "corpus", None)
    if spec and spec.startswith("hub:"):
        name, _, config = spec[4:].partition("/")
        return load_hub_dataset(name, config or None, text_field=args.text_field)
    if spec and ":" not in spec and "," not in spec:
        return load_corpus(spec)
    return None


def tokens_from_args(args, lm):
    """Calibration TokenSet from --corpus / --text / --tokens."""
    from analysis.data.domains import parse_domain_weights
    from analysis.data.files import load_token_file
    from analysis.data.windows import SampleConfig, sample_hybrid, sample_windows
    from analysis.errors import DataError

    if getattr(args, "tokens", None):
        vocab = lm.model.get_input_embeddings().num_embeddings
        ts = load_token_file(args.tokens, vocab_size=vocab, seq_len=args.seq_len)
        if args.samples is not None:                 # honoured for token files too: the first N rows
            if args.samples > len(ts):
                raise DataError(f"{args.tokens} holds {len(ts)} windows but --samples {args.samples} asks for more",
                                hint=f"use --samples {len(ts)} or fewer, or leave it out to use all rows")
            if args.samples < len(ts):
                ts = ts.subset(slice(0, args.samples))
        return ts
    n = args.samples or getattr(args, "default_samples", None)      # a command's own default (groundtruth: 8)
    cfg = from_args(SampleConfig, args, **({"n_samples": n} if n else {}))
    corpus = corpus_from_args(args)
    if corpus is not None:
        return sample_windows(corpus, lm.tokenizer, cfg, split=args.split)
    return sample_hybrid(parse_domain_weights(args.corpus), lm.tokenizer, cfg, split=args.split)


def stderr_progress(quiet: bool = False):
    """A progress callback printing one updating line on stderr."""
    if quiet:
        return None

    def cb(frac: float, msg: str) -> None:
        end = "\n" if frac >= 1 else ""
        print(f"\r[{frac * 100:5.1f}%] {msg}".ljust(70), end=end, file=sys.stderr, flush=True)

    return cb


# ---- the command's product on stdout --------------------------------------------------------------------
_PRODUCT = None


def set_product_stream(stream) -> None:
    """Called by :func:`analysis.cli.main.main`: where :func:`emit` writes (stdout as it was at the start)."""
    global _PRODUCT
    _PRODUCT = stream


def emit(product) -> None:
    """Print the command's product (a JSON-able object, or text) on stdout; nothing else goes there while a
    command runs (see :func:`analysis.cli.main.main`)."""
    import json

    text = product if isinstance(product, str) else json.dumps(product)
    stream = _PRODUCT if _PRODUCT is not None else sys.stdout
    print(text, file=stream, flush=True)
