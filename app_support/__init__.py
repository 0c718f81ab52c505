"""Shared helpers for the Entroscope Streamlit app (session state, caching, plotting, widgets).

Pages in ``pages/`` stay thin views over :mod:`analysis`; everything they share lives here. The
library never imports Streamlit; this package is the only place (besides the pages) that does.

Modules:

* :mod:`app_support.state`   – stable session-state keys, persisted widget values, run records, plans
* :mod:`app_support.models`  – model loading through ``st.cache_resource`` (plus the tiny-model test hook)
* :mod:`app_support.data`    – calibration token sets, cached by everything they depend on
* :mod:`app_support.jobs`    – the analysis pass in a background thread (live progress, Stop button)
* :mod:`app_support.plots`   – plotly figures (pure functions of analysis results)
* :mod:`app_support.widgets` – page scaffolding: set-up, sidebar status, guarded bodies, explainers
* :mod:`app_support.commands` – the exact CLI commands that reproduce a session
"""
