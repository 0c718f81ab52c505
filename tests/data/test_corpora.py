"""Tests for analysis.data (corpus, domains, files, hub, tokens, streams, windows): built-in domains, user files, hub fallback, token files and window sampling."""
from __future__ import annotations

import copy
import json
import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis import data as C
from analysis.data import domains, hub, streams, windows
from analysis.errors import DataError
from analysis.testing import tiny_tokenizer

BOS, EOS = 256, 257


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def bos_tok():
    """The tiny tokenizer, but adding a BOS by default (like Gemma's)."""
    from tokenizers import processors

    t = copy.deepcopy(tiny_tokenizer())
    t._tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", BOS)])
    return t


def ascii_docs(n=12, seed=0, lo=50, hi=400):
    """Distinct ASCII documents of varied length (byte-level tokens == characters)."""
    rng = np.random.default_rng(seed)
    words = ["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta", "iota", "kappa"]
    return [f"doc{i} " + " ".join(rng.choice(words, size=int(rng.integers(lo, hi)) // 5)) for i in range(n)]


def letter_corpus(name, letter, n=6, length=300):
    docs = [(letter * length)[: length - i] for i in range(n)]
    return C.Corpus(name, docs[:-1], docs[-1:], {})


def is_slice_of_some(row_text: str, docs) -> bool:
    return any(row_text in d for d in docs)


# --- built-in domains --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(C.DOMAINS))
def test_builtin_domain_loads_with_disjoint_stable_split(name):
    c = C.load_corpus(name)
    assert c.name == name and c.calib and c.eval
    assert all(isinstance(d, str) and d.strip() for d in c.calib + c.eval)
    assert not set(c.calib) & set(c.eval)
    assert 0.05 < len(c.eval) / (len(c.calib) + len(c.eval)) < 0.35
    again = C.load_corpus(name)
    assert again.calib == c.calib and again.eval == c.eval
    again.calib.append("mutated")  # callers get fresh lists
    assert C.load_corpus(name).calib == c.calib
    assert c.meta["n_docs"] == {"calib": len(c.calib), "eval": len(c.eval)}
    assert c.meta["licence"] and c.meta["source"] and c.meta["split_rule"]


@pytest.mark.parametrize("name", ["docs", "math"])
def test_builtin_split_is_rebuilt_identically(name):
    before = C.load_corpus(name)
    domains._load_builtin.cache_clear()
    after = C.load_corpus(name)
    assert (after.calib, after.eval) == (before.calib, before.eval)


def test_news_uses_the_source_split():
    c = C.load_corpus("news")
    assert len(c.calib) == 300 and len(c.eval) == 50


def test_registry_is_documented():
    infos = C.list_domains()
    assert [d.name for d in infos] == ["wiki", "news", "code", "docs", "dialogue", "math"]
    for d in infos:
        assert d.title and d.source and d.licence and d.description


def test_unknown_domain_lists_valid_names():
    with pytest.raises(DataError, match=r"unknown domain 'poetry'.*wiki, news, code, docs, dialogue, math"):
        C.load_corpus("poetry")


def test_corpus_split_names():
    c = C.Corpus("x", ["a"], ["b"], {})
    assert c.split("all") == ["a", "b"]
    with pytest.raises(DataError, match="unknown split 'test'"):
        c.split("test")


# --- window sampling -----------------------------------------------------------------------------------


def test_same_seed_same_windows_different_seed_different(tok):
    cfg = C.SampleConfig(n_samples=8, seq_len=32, seed=7)
    a = C.sample_windows("news", tok, cfg)
    b = C.sample_windows("news", tok, cfg)
    c = C.sample_windows("news", tok, C.SampleConfig(n_samples=8, seq_len=32, seed=8))
    assert torch.equal(a.input_ids, b.input_ids) and a.sha256() == b.sha256()
    assert not torch.equal(a.input_ids, c.input_ids) and a.sha256() != c.sha256()
    assert a.input_ids.shape == (8, 32) and a.input_ids.dtype == torch.long
    assert a.domains == ["news"] * 8 and a.source["split"] == "calib" and a.source["add_bos"] is False


def test_random_windows_are_slices_of_long_docs(tok):
    docs = ascii_docs()
    ts = C.sample_windows(docs, tok, C.SampleConfig(n_samples=20, seq_len=40))
    assert ts.input_ids.shape == (20, 40) and "fallback" not in ts.source
    for row in ts.input_ids:
        assert is_slice_of_some(tok.decode(row.tolist()), docs)


def test_random_windows_from_very_long_doc_use_chunks(tok):
    doc = "".join(f"line {i} of a long document\n" for i in range(1500))  # > chunk cap
    assert len(doc) > streams.chunk_cap(32)
    ts = C.sample_windows([doc], tok, C.SampleConfig(n_samples=16, seq_len=32))
    texts = [tok.decode(r.tolist()) for r in ts.input_ids]
    assert all(t in doc for t in texts)
    assert max(doc.index(t) for t in texts) > streams.chunk_cap(32)  # not only the start of the doc


def test_eval_split_windows_come_from_eval_docs(tok):
    c = C.Corpus("x", ascii_docs(6, seed=1), ascii_docs(6, seed=2), {})
    ts = C.sample_windows(c, tok, C.SampleConfig(n_samples=10, seq_len=30), split="eval")
    for row in ts.input_ids:
        assert is_slice_of_some(tok.decode(row.tolist()), c.eval)


def test_add_bos_puts_bos_in_column_zero(tok, bos_tok):
    docs = ascii_docs()
    ts = C.sample_windows(docs, tok, C.SampleConfig(n_samples=6, seq_len=24, add_bos=True))
    assert ts.input_ids.shape == (6, 24)
    assert (ts.input_ids[:, 0] == BOS).all() and (ts.input_ids[:, 1:] < 256).all()
    assert ts.source["add_bos"] is True
    auto_off = C.sample_windows(docs, tok, C.SampleConfig(n_samples=6, seq_len=24))
    assert (auto_off.input_ids < 256).all()  # tiny tokenizer adds no BOS by default
    auto_on = C.sample_windows(docs, bos_tok, C.SampleConfig(n_samples=6, seq_len=24))
    assert (auto_on.input_ids[:, 0] == BOS).all() and auto_on.source["add_bos"] is True


def test_consecutive_windows_are_contiguous_slices_of_the_stream(tok):
    docs = ascii_docs(8)
    cfg = C.SampleConfig(n_samples=5, seq_len=40, mode="consecutive", seed=3)
    ts = C.sample_windows(docs, tok, cfg)
    ordered = [docs[i] for i in windows._doc_order(len(docs), 3)]
    stream = C.token_stream(ordered, tok, add_bos=False)
    assert torch.equal(ts.input_ids.flatten(), stream[: 5 * 40])
    with_bos = C.sample_windows(docs, tok, C.SampleConfig(n_samples=5, seq_len=40, mode="consecutive", seed=3,
                                                          add_bos=True))
    assert (with_bos.input_ids[:, 0] == BOS).all()
    assert torch.equal(with_bos.input_ids[:, 1:].flatten(), stream[: 5 * 39])


def test_short_docs_fall_back_to_consecutive(tok):
    docs = [f"short document number {i}." for i in range(40)]
    ts = C.sample_windows(docs, tok, C.SampleConfig(n_samples=4, seq_len=64))
    assert ts.source["fallback"] == "consecutive" and ts.input_ids.shape == (4, 64)
    assert (ts.input_ids == EOS).any()  # documents joined with EOS


def test_small_text_wraps_to_fill_n_rows(tok):
    docs = ["x" * 100]
    ts = C.sample_windows(docs, tok, C.SampleConfig(n_samples=6, seq_len=50, mode="consecutive"))
    assert ts.input_ids.shape == (6, 50) and ts.source["wrapped"] and ts.source["available_tokens"] == 100


def test_too_little_text_for_one_window(tok):
    with pytest.raises(DataError, match=r"not enough text .*: 11 tokens available, 64 needed"):
        C.sample_windows(["tiny corpus"], tok, C.SampleConfig(n_samples=2, seq_len=64))


def test_bad_sample_config(tok):
    with pytest.raises(DataError, match="unknown sampling mode 'striped'"):
        C.sample_windows(ascii_docs(), tok, C.SampleConfig(mode="striped"))
    from analysis.errors import EntroscopeError

    with pytest.raises(EntroscopeError, match="n_samples"):      # refused when the config is made (check_ranges)
        C.sample_windows(ascii_docs(), tok, C.SampleConfig(n_samples=0))


def test_builtin_code_default_protocol_is_quick(tok):
    t0 = time.perf_counter()
    ts = C.sample_windows("code", tok, C.SampleConfig())
    assert ts.input_ids.shape == (128, 256)
    assert time.perf_counter() - t0 < 10


# --- hybrid --------------------------------------------------------------------------------------------


def test_apportion_largest_remainder():
    assert C.apportion(10, {"a": 1, "b": 1, "c": 1}) == {"a": 4, "b": 3, "c": 3}
    assert C.apportion(7, {"a": 0.1, "b": 0.2, "c": 0.7}) == {"a": 1, "b": 1, "c": 5}
    assert C.apportion(5, {"a": 0, "b": 2}) == {"a": 0, "b": 5}


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 500), st.lists(st.floats(0, 100, allow_nan=False), min_size=1, max_size=6))
def test_apportion_sums_exactly(n, ws):
    ws[0] += 1.0  # positive sum
    weights = {f"d{i}": w for i, w in enumerate(ws)}
    counts = C.apportion(n, weights)
    assert sum(counts.values()) == n
    total = sum(ws)
    for k, w in weights.items():
        assert abs(counts[k] - n * w / total) < 1 + 1e-9


def test_hybrid_exact_counts_and_row_domains(tok):
    corpora = {"a": letter_corpus("a", "a"), "b": letter_corpus("b", "b"), "c": letter_corpus("c", "c")}
    cfg = C.SampleConfig(n_samples=10, seq_len=16, seed=5)
    ts = C.sample_hybrid({"a": 1, "b": 1, "c": 1}, tok, cfg, corpora=corpora)
    assert ts.input_ids.shape == (10, 16)
    assert ts.domain_counts() == {"a": 4, "b": 3, "c": 3}
    assert ts.source["counts"] == {"a": 4, "b": 3, "c": 3}
    for row, dom in zip(ts.input_ids, ts.domains):
        assert set(tok.decode(row.tolist())) == {dom}
    again = C.sample_hybrid({"a": 1, "b": 1, "c": 1}, tok, cfg, corpora=corpora)
    assert torch.equal(ts.input_ids, again.input_ids) and ts.domains == again.domains
    manifest = ts.to_manifest()
    assert manifest["n"] == 10 and manifest["token_counts"]["a"] == 4 * 16 and manifest["sha256"] == ts.sha256()


def test_hybrid_with_builtin_domains(tok):
    ts = C.sample_hybrid(C.parse_domain_weights("news:2,math:1,docs:1"), tok,
                         C.SampleConfig(n_samples=9, seq_len=32))
    assert ts.source["counts"] == {"news": 5, "math": 2, "docs": 2}
    assert ts.domain_counts() == {"news": 5, "math": 2, "docs": 2}
    assert set(ts.source["parts"]) == {"news", "math", "docs"}


def test_hybrid_rejects_bad_weights(tok):
    cfg = C.SampleConfig(n_samples=4, seq_len=16)
    with pytest.raises(DataError, match=r"unknown domain 'poetry' in weights; valid domains: wiki"):
        C.sample_hybrid({"wiki": 1, "poetry": 1}, tok, cfg)
    with pytest.raises(DataError, match=r"must be a finite number >= 0, got -1"):
        C.sample_hybrid({"news": -1, "math": 2}, tok, cfg)
    with pytest.raises(DataError, match="positive sum"):
        C.sample_hybrid({"news": 0}, tok, cfg)


def test_parse_domain_weights():
    assert C.parse_domain_weights("wiki:1,code:1,news:2") == {"wiki": 1.0, "code": 1.0, "news": 2.0}
    assert C.parse_domain_weights(" wiki , code ") == {"wiki": 1.0, "code": 1.0}
    assert C.parse_domain_weights("wiki:0.5") == {"wiki": 0.5}


@pytest.mark.parametrize("text,msg", [
    ("", "empty domain list"),
    ("wiki,,code", "empty entry"),
    ("wiki:abc", r"bad weight 'abc' for domain 'wiki'"),
    ("wiki:1:2", r"bad weight '1:2'"),
    (":2", "bad domain name ''"),
    ("wiki:1,wiki:2", "appears twice"),
    ("wiki:-1", r">= 0, got -1"),
    ("wiki:0,code:0", "positive sum"),
    ("wiki:inf", "finite"),
])
def test_parse_domain_weights_errors(text, msg):
    with pytest.raises(DataError, match=msg):
        C.parse_domain_weights(text)


# --- token streams, TokenSet, preview ----------------------------------------------------------------


def test_token_stream(tok):
    s = C.token_stream(["ab", "cd"], tok)
    assert s.tolist() == [97, 98, EOS, 99, 100]
    assert C.token_stream(["ab", "cd"], tok, add_bos=True).tolist() == [BOS, 97, 98, EOS, 99, 100]
    assert C.token_stream(["ab", "cd"], tok, max_tokens=4).tolist() == [97, 98, EOS, 99]
    long_docs = ascii_docs(20)
    assert len(C.token_stream(long_docs, tok, max_tokens=123)) == 123
    with pytest.raises(DataError, match="no text"):
        C.token_stream(["  "], tok)


def test_tokenset_methods(tok):
    ts = C.sample_windows(ascii_docs(), tok, C.SampleConfig(n_samples=10, seq_len=8))
    assert len(ts) == 10 and ts.seq_len == 8
    assert [b.shape[0] for b in ts.batches(4)] == [4, 4, 2]
    assert torch.equal(torch.cat(list(ts.batches(3))), ts.input_ids)
    sub = ts.subset([3, 1])
    assert torch.equal(sub.input_ids, ts.input_ids[[3, 1]]) and len(sub) == 2
    assert len(ts.subset(slice(0, 5))) == 5
    mask = torch.zeros(10, dtype=torch.bool)
    mask[[0, 9]] = True
    assert torch.equal(ts.subset(mask).input_ids, ts.input_ids[[0, 9]])
    m = ts.to_manifest()
    assert m["n"] == 10 and m["seq_len"] == 8 and m["domain_counts"] == {"text": 10} and m["seed"] == 2024
    with pytest.raises(DataError, match="batch size"):
        next(ts.batches(0))


def test_preview_round_robin_and_truncation(tok):
    corpora = {"a": letter_corpus("a", "a"), "b": letter_corpus("b", "b")}
    ts = C.sample_hybrid({"a": 3, "b": 1}, tok, C.SampleConfig(n_samples=8, seq_len=20), corpora=corpora)
    items = C.preview(ts, tok, n=2, chars=10)
    assert {i["domain"] for i in items} == {"a", "b"}
    assert all(len(i["text"]) == 10 and i["truncated"] and i["n_tokens"] == 20 for i in items)


# --- user files -----------------------------------------------------------------------------------------

PARAS = [(f"Paragraph {i}: " + "some words about topic %d. " % i * 6).strip() for i in range(10)]


def test_txt_file_blank_line_documents(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("\n\n".join(PARAS) + "\n", encoding="utf-8")
    c = C.load_text_file(p)
    assert c.name == "notes.txt" and sorted(c.calib + c.eval) == sorted(PARAS)
    assert len(c.eval) == 2 and not set(c.calib) & set(c.eval)
    again = C.load_text_file(p)
    assert (again.calib, again.eval) == (c.calib, c.eval)


def test_txt_single_document_is_cut_in_two(tmp_path):
    p = tmp_path / "one.txt"
    lines = [f"line {i} of a single document" for i in range(40)]
    p.write_text("\n".join(lines), encoding="utf-8")
    c = C.load_text_file(p)
    assert len(c.calib) == len(c.eval) == 1
    assert c.calib[0].splitlines() + c.eval[0].splitlines() == lines


def test_jsonl_csv_parquet_load(tmp_path):
    rows = [{"id": i, "content": p} for i, p in enumerate(PARAS)]
    j = tmp_path / "data.jsonl"
    j.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    cj = C.load_text_file(j)
    assert sorted(cj.calib + cj.eval) == sorted(PARAS) and cj.meta["text_field"] == "content"

    import pandas as pd

    csv = tmp_path / "data.csv"
    pd.DataFrame({"n": range(10), "body": PARAS}).to_csv(csv, index=False)
    cc = C.load_text_file(csv)
    assert sorted(cc.calib + cc.eval) == sorted(PARAS) and cc.meta["text_field"] == "body"

    pq = tmp_path / "data.parquet"
    pd.DataFrame({"title": [f"t{i}" for i in range(10)], "body": PARAS}).to_parquet(pq)
    cp = C.load_text_file(pq, text_field="body")
    assert sorted(cp.calib + cp.eval) == sorted(PARAS)
    assert (cp.calib, cp.eval) == (cj.calib, cj.eval)  # split depends on the text only


def test_load_text_bytes(tmp_path):
    data = "\n\n".join(PARAS).encode()
    c = C.load_text_bytes(data, "upload dir/my notes.txt")
    assert c.name == "my notes.txt" and len(c.calib) + len(c.eval) == 10
    with pytest.raises(DataError, match=r"big.txt is .* MB; the upload limit is"):
        C.load_text_bytes(data, "big.txt", max_bytes=100)
    with pytest.raises(DataError, match=r"^bad file.txt is not valid UTF-8 \(byte 0xe9"):
        C.load_text_bytes(b"caf\xe9 " * 100, "bad file.txt")


@pytest.mark.parametrize("name,content,msg", [
    ("empty.txt", b"", r"empty.txt is empty"),
    ("blank.txt", b"  \n\n \n", r"blank.txt is empty \(only whitespace\)"),
    ("bin.txt", bytes(range(256)) * 4, r"bin.txt looks like a binary file"),
    ("latin.txt", "café au lait. ".encode("latin-1") * 40,
     r"latin.txt is not valid UTF-8 \(byte 0xe9 at offset 3: invalid continuation byte\)"),
    ("wide.txt", "hello world ".encode("utf-16") * 40, r"wide.txt is not UTF-8: it is UTF-16 encoded"),
    ("short.txt", b"just a few words", r"too little text in short.txt: 16 characters in 1 document"),
    ("data.docx", b"PK\x03\x04", r"unsupported file type .docx"),
    ("bad.jsonl", b'{"text": "a"\n{oops', r"could not read bad.jsonl as jsonl"),
    ("nums.csv", b"a,b\n1,2\n3,4\n", r"nums.csv has no text column; its columns are: a \(int64\), b \(int64\)"),
])
def test_text_file_errors(tmp_path, name, content, msg):
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(DataError, match=msg) as info:
        C.load_text_file(p)
    assert "\n" not in str(info.value)


def test_text_file_missing_and_bad_field(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        C.load_text_file(tmp_path / "nope.txt")
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(json.dumps({"text": t, "n": 1}) for t in PARAS), encoding="utf-8")
    with pytest.raises(DataError, match=r"d.jsonl has no column 'body'; its columns are: text \(string\), n \(int64\)"):
        C.load_text_file(p, text_field="body")
    with pytest.raises(DataError, match="column 'n' of d.jsonl is not text"):
        C.load_text_file(p, text_field="n")


# --- hub datasets ---------------------------------------------------------------------------------------


def test_hub_dataset_offline_is_a_quick_data_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(DataError, match=r"'wikitext' could not be fetched: the dataset hub is not reachable") as e:
        C.load_hub_dataset("wikitext", "wikitext-2-raw-v1")
    assert time.perf_counter() - t0 < 2
    assert "built-in domain" in e.value.hint


def test_hub_dataset_unreachable(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(DataError, match="not reachable"):
        C.load_hub_dataset("c4", "en")


def test_wikitext_rows_group_into_articles():
    rows = ["", " = Alpha = \n", "", " Alpha text . \n", " = = Section = = \n", " more . \n", " = Beta = \n", " b . \n"]
    assert hub._wikitext_articles(rows) == ["= Alpha =\nAlpha text .\n= = Section = =\nmore .", "= Beta =\nb ."]


# --- token files ----------------------------------------------------------------------------------------


def test_token_files_load(tmp_path):
    arr = np.arange(24, dtype=np.int32).reshape(4, 6)
    np.save(tmp_path / "t.npy", arr)
    ts = C.load_token_file(tmp_path / "t.npy", vocab_size=260, seq_len=6)
    assert ts.input_ids.dtype == torch.long and torch.equal(ts.input_ids, torch.from_numpy(arr).long())
    assert ts.domains == ["t.npy"] * 4 and ts.source["kind"] == "token_file"
    torch.save(torch.from_numpy(arr).long(), tmp_path / "t.pt")
    assert torch.equal(C.load_token_file(tmp_path / "t.pt").input_ids, ts.input_ids)
    torch.save({"input_ids": torch.from_numpy(arr)}, tmp_path / "d.pt")
    assert torch.equal(C.load_token_file(tmp_path / "d.pt").input_ids, ts.input_ids)


@pytest.mark.parametrize("make,kwargs,msg", [
    (lambda: np.arange(6), {}, r"shape \(6,\); expected a 2-D array"),
    (lambda: np.zeros((2, 2, 2), dtype=np.int64), {}, r"shape \(2, 2, 2\)"),
    (lambda: np.zeros((2, 3), dtype=np.float32), {}, "dtype float32; token ids must be integers"),
    (lambda: np.zeros((2, 3), dtype=bool), {}, "dtype bool"),
    (lambda: np.zeros((0, 8), dtype=np.int64), {}, r"is empty \(shape \(0, 8\)\)"),
    (lambda: np.array([[1, -1, -5]]), {}, r"2 negative token id\(s\) \(min -5\)"),
    (lambda: np.array([[1, 300, 999]]), {"vocab_size": 260}, r"2 token id\(s\) >= the vocab size 260 \(max id 999\)"),
    (lambda: np.zeros((2, 5), dtype=np.int64), {"seq_len": 8}, "windows of 5 tokens but seq_len is 8"),
    (lambda: np.array([[1, "a"]], dtype=object), {}, "holds Python objects"),
])
def test_token_file_errors(tmp_path, make, kwargs, msg):
    arr = make()
    p = tmp_path / "bad.npy"
    np.save(p, arr, allow_pickle=True)
    with pytest.raises(DataError, match=msg):
        C.load_token_file(p, **kwargs)


def test_token_file_pt_errors(tmp_path):
    torch.save(torch.rand(2, 3), tmp_path / "f.pt")
    with pytest.raises(DataError, match="dtype float32"):
        C.load_token_file(tmp_path / "f.pt")
    torch.save([1, 2, 3], tmp_path / "l.pt")
    with pytest.raises(DataError, match="holds a list, not a tensor"):
        C.load_token_file(tmp_path / "l.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(DataError, match="junk.pt is text, not a torch file"):
        C.load_token_file(tmp_path / "junk.pt")
    with pytest.raises(DataError, match="Token file not found"):
        C.load_token_file(tmp_path / "missing.npy")
