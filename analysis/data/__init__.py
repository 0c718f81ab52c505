"""Calibration and evaluation text, and the token windows cut from it.

Three layers:

* **Text** (:class:`~analysis.data.corpus.Corpus`): built-in domains that need no network
  (:mod:`~analysis.data.domains`: :data:`DOMAINS`, loaded by :func:`load_corpus`), user files and uploads
  (:mod:`~analysis.data.files`: :func:`load_text_file`, :func:`load_text_bytes`) and hub datasets
  (:mod:`~analysis.data.hub`: :func:`load_hub_dataset`). Every corpus has a fixed, seed-independent
  document-level split into ``calib`` (calibration) and ``eval`` (held-out) documents.
* **Windows** (:class:`~analysis.data.tokens.TokenSet`): ``[N, T]`` token ids cut from a corpus by
  :func:`sample_windows` (one corpus) or :func:`sample_hybrid` (a weighted mix of domains), as configured by
  :class:`SampleConfig` (:mod:`~analysis.data.windows`); or read as-is from a ``.npy``/``.pt`` file by
  :func:`load_token_file`.
* **Streams** (:mod:`~analysis.data.streams`): :func:`token_stream` joins documents with EOS for perplexity
  over disjoint windows.

Sampling follows the EntroDrop protocol by default (128 windows of 256 tokens, seed 2024, each window a
random slice of a random document longer than the window). Documents are tokenized lazily, without
special tokens, and only as far as needed; whole-document tokenizations are cached per tokenizer.

Every problem a user can cause raises :class:`~analysis.errors.DataError` with a one-line message.

Modules, lower first (a module imports only those before it): corpus, tokens, streams < domains, files
< hub, windows.
This face is for callers outside ``analysis``; inside, import from the defining module (and monkeypatch
it there: e.g. ``analysis.data.files.MAX_UPLOAD_BYTES``).
"""
from analysis.lazy import lazy_exports

_LAZY = {
    "Corpus": "corpus", "DEFAULT_EVAL_FRACTION": "corpus", "SPLITS": "corpus", "DOMAINS": "domains",
    "DomainInfo": "domains", "apportion": "domains", "list_domains": "domains", "load_corpus": "domains",
    "parse_domain_weights": "domains", "load_text_bytes": "files", "load_text_file": "files",
    "load_token_file": "files", "hub_offline_env": "hub", "hub_reachable": "hub", "load_hub_dataset": "hub",
    "token_stream": "streams", "tokenizer_adds_bos": "streams", "TokenSet": "tokens", "preview": "tokens",
    "MODES": "windows", "SampleConfig": "windows", "sample_hybrid": "windows", "sample_windows": "windows",
}
__all__ = sorted(_LAZY)

__getattr__ = lazy_exports(__name__, _LAZY)
