"""Entroscope: look inside causal language models and prune them with information theory.

Pipeline (one module per concern)::

    models (load, cache)  →  corpora (text, sampling)  →  capture (hooks, streaming stats)
      →  estimators (Bucket / KNN / Rényi)  →  criteria (registry)  →  selection (boundary, ranking)

Quick start::

    from analysis import load_model, load_corpus, sample_windows, SampleConfig, analyze, AnalysisConfig
    lm = load_model("smollm2")
    tokens = sample_windows(load_corpus("wiki"), lm.tokenizer, SampleConfig(n_samples=32, seq_len=256))
    run = analyze(lm, tokens, AnalysisConfig(estimator="knn"))
    run.drop_order      # 0-based, most droppable first

``analysis`` never imports Streamlit.
"""
__version__ = "0.1.0"

_LAZY = {
    "load_model": "models", "LoadedModel": "models", "EMBEDDED": "models", "DEFAULT_MODEL": "models",
    "analyze": "run", "AnalysisConfig": "run", "AnalysisResult": "result",
    "CRITERIA": "criteria", "select": "criteria", "ESTIMATORS": "estimators",
    "load_corpus": "corpora", "sample_windows": "corpora", "sample_hybrid": "corpora", "SampleConfig": "corpora",
    "TokenSet": "corpora", "DOMAINS": "corpora",
    "Plan": "plan", "pruned_view": "surgery", "what_if": "surgery", "prune_copy": "surgery",
    "save_pruned": "surgery", "load_pruned": "surgery",
    "perplexity": "evaluate", "agreement": "evaluate", "latency": "evaluate", "sweep": "evaluate",
    "generate_pair": "evaluate", "EvalConfig": "evaluate",
}


def __getattr__(name):  # lazy: `import analysis` stays cheap (no torch/transformers until needed)
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(name)
