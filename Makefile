# stedge: set-up, demo and tests. Every target works on a fresh machine, offline but for PyPI.
# Two lines: the main line (.venv, `setup`/`test`: transformers 5, sentence-transformers 6) and the compatibility
# line (.venv-compat, `setup-compat`/`test-compat`: transformers 4.57, sentence-transformers 5 with its
# optimum-based ONNX/OpenVINO backends, versions from constraints/compat.txt).
VENV   ?= .venv
PY     := $(VENV)/bin/python
VENV_COMPAT ?= .venv-compat
PYC    := $(VENV_COMPAT)/bin/python
# torch first, pinned, so nothing pulls a multi-GB CUDA build on a CPU-only machine.
# Elsewhere: make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu (or .../cu126 for a GPU)
TORCH  ?= torch==2.13.0
TORCH_INDEX ?=
PYTEST_ARGS ?=

.PHONY: setup setup-compat demo lint test test-fast test-compat check-install bench wheel clean

setup: $(VENV)/.stedge-installed

$(VENV)/.stedge-installed: pyproject.toml runtimes/python/pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH)"
	$(PY) -m pip install -q -e "runtimes/python[onnxruntime,openvino]" -e ".[dev]" "$(TORCH)"
	$(PY) -m pip check
	touch $@

setup-compat: $(VENV_COMPAT)/.stedge-installed

$(VENV_COMPAT)/.stedge-installed: pyproject.toml runtimes/python/pyproject.toml constraints/compat.txt
	test -x $(PYC) || python3 -m venv $(VENV_COMPAT)
	$(PYC) -m pip install -q --upgrade pip
	$(PYC) -m pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH)"
	$(PYC) -m pip install -q -c constraints/compat.txt -e "runtimes/python[onnxruntime,openvino]" \
		-e ".[train,onnx,openvino,test,compat]" "$(TORCH)"
	$(PYC) -m pip check
	touch $@

# Export the bundled all-MiniLM-L6-v2 to verified int8 ONNX, then embed a sample through the runtime.
demo: setup
	HF_HUB_OFFLINE=1 $(VENV)/bin/stedge export all-MiniLM-L6-v2 --quantize int8 -o models/all-MiniLM-L6-v2-stedge --overwrite
	HF_HUB_OFFLINE=1 $(VENV)/bin/stedge embed models/all-MiniLM-L6-v2-stedge "stedge ships sentence embeddings to the edge."

# Tests marked `compat` are deselected here (tests/conftest.py): the main line cannot install their stack.
# ruff's lint and format settings live in pyproject.toml ([tool.ruff]).
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: setup
	HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false $(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "not real and not slow" $(PYTEST_ARGS)

# Only the tests marked `compat` (sentence-transformers 5 loading artifacts through its ONNX/OpenVINO backends).
# pytest exits 5 when it collects nothing: that fails here too, with a message, since this job exists to run them.
test-compat: setup-compat
	HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false $(PYC) -m pytest -q -m compat $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "test-compat: no test marked compat was collected" >&2; exit 1; fi; exit $$rc

# `pip install stedge` into an environment that already holds the newest transformers, sentence-transformers,
# huggingface-hub and tokenizers must change none of them (dry run, main-line venv).
check-install: setup
	$(PY) .ci/check_install.py

bench: setup
	HF_HUB_OFFLINE=1 $(VENV)/bin/stedge bench cpu $(if $(wildcard $(PEER_PY)),--peer-python $(PEER_PY))

# `make bench` runs the sentence-transformers peers in the compatibility venv when it exists (make setup-compat):
# only there can sentence-transformers use its optimum-based ONNX / OpenVINO backends (stedge bench --peer-python).
PEER_PY = $(or $(VENV_COMPAT),.venv-compat)/bin/python

wheel: setup
	$(PY) -m build runtimes/python --wheel -o runtimes/python/dist

clean:
	rm -rf $(VENV) $(VENV_COMPAT) build dist *.egg-info runtimes/python/dist
