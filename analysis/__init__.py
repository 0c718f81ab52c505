"""Entroscope: look inside causal language models and prune them with information theory.

Packages by concern (see docs/architecture.md)::

    models (load, adapt, edit)  →  data (text, windows)  →  measure (capture, estimators)
      →  score (criteria, selection, MI-PRUN, search)  →  evaluate (perplexity, latency, sweeps)
      →  export / cli

Quick start::

    from analysis import load_model, load_corpus, sample_windows, SampleConfig, analyze, AnalysisConfig
    lm = load_model("smollm2")
    tokens = sample_windows(load_corpus("wiki"), lm.tokenizer, SampleConfig(n_samples=32, seq_len=256))
    run = analyze(lm, tokens, AnalysisConfig(estimator="knn"))
    run.drop_order      # 0-based, most droppable first

``analysis`` never imports Streamlit.
"""
from analysis.lazy import lazy_exports

__version__ = "0.1.0"

_LAZY = {
    "load_model": "models.loading", "LoadedModel": "models.loading", "EMBEDDED": "models.embedded", "DEFAULT_MODEL": "models.embedded",
    "analyze": "run", "AnalysisConfig": "run", "AnalysisResult": "score.result",
    "CRITERIA": "score.criteria", "select": "score.criteria", "ESTIMATORS": "measure.estimators",
    "load_corpus": "data.domains", "sample_windows": "data.windows", "sample_hybrid": "data.windows", "SampleConfig": "data.windows",
    "TokenSet": "data.tokens", "DOMAINS": "data.domains",
    "Plan": "models.plan", "pruned_view": "models.surgery", "what_if": "models.surgery", "prune_copy": "models.surgery",
    "save_pruned": "models.surgery", "load_pruned": "models.loading",
    "perplexity": "evaluate.quality", "agreement": "evaluate.quality", "latency": "evaluate.cost", "sweep": "evaluate.sweeps",
    "generate_pair": "evaluate.quality", "EvalConfig": "evaluate.windows",
}

__getattr__ = lazy_exports(__name__, _LAZY)
