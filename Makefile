# stedge: set-up, demo and tests. Every target works on a fresh machine, offline but for PyPI.
VENV   ?= .venv
PY     := $(VENV)/bin/python
# torch first, pinned, so nothing pulls a multi-GB CUDA build on a CPU-only machine.
# Elsewhere: make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu (or .../cu126 for a GPU)
TORCH  ?= torch==2.13.0
TORCH_INDEX ?=
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast bench wheel clean

setup: $(VENV)/.stedge-installed

$(VENV)/.stedge-installed: pyproject.toml runtimes/python/pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH)"
	$(PY) -m pip install -q -e "runtimes/python[onnxruntime,openvino]" -e ".[dev]" "$(TORCH)"
	$(PY) -m pip check
	touch $@

# Export the bundled all-MiniLM-L6-v2 to verified int8 ONNX, then embed a sample through the runtime.
demo: setup
	HF_HUB_OFFLINE=1 $(VENV)/bin/stedge export all-MiniLM-L6-v2 --quantize int8 -o models/all-MiniLM-L6-v2-stedge --overwrite
	HF_HUB_OFFLINE=1 $(VENV)/bin/stedge embed models/all-MiniLM-L6-v2-stedge "stedge ships sentence embeddings to the edge."

test: setup
	HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false $(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "not real and not slow" $(PYTEST_ARGS)

bench: setup
	HF_HUB_OFFLINE=1 $(VENV)/bin/stedge bench cpu $(if $(wildcard $(PEER_PY)),--peer-python $(PEER_PY))

# `make bench` runs the sentence-transformers peers in the compatibility venv when it exists (make setup-compat):
# only there can sentence-transformers use its optimum-based ONNX / OpenVINO backends (stedge bench --peer-python).
PEER_PY = $(or $(VENV_COMPAT),.venv-compat)/bin/python

wheel: setup
	$(PY) -m build runtimes/python --wheel -o runtimes/python/dist

clean:
	rm -rf $(VENV) build dist *.egg-info runtimes/python/dist
