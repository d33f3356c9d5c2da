"""Fixtures for the runtime tests: the shared ones from tests/conftest.py plus built artifacts."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
sys.path.insert(0, str(HERE))

_spec = importlib.util.spec_from_file_location("stedge_shared_conftest", REPO / "tests" / "conftest.py")
_shared = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_shared)
minilm_path = _shared.minilm_path
shared_data = _shared.shared_data
stsb_test = _shared.stsb_test
tiny_model = _shared.tiny_model
tiny_cross_encoder = _shared.tiny_cross_encoder
_offline_and_threads = _shared._offline_and_threads

from runtime_artifacts import build_artifact  # noqa: E402
from tiny import make_tiny_bert  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _sha_cache(tmp_path_factory):
    """Keep the sha256 cache of the tests out of the home folder."""
    import os

    os.environ["STEDGE_RUNTIME_CACHE"] = str(tmp_path_factory.mktemp("sha_cache"))
    yield


@pytest.fixture(scope="session")
def tiny_artifact(tiny_model, tmp_path_factory) -> Path:
    """Tiny encoder artifact with onnx-fp32 and openvino-fp32 variants."""
    return build_artifact(tiny_model, tmp_path_factory.mktemp("tiny_art") / "artifact", openvino=True)


@pytest.fixture(scope="session")
def tiny_prompt_model(tmp_path_factory) -> Path:
    """Tiny encoder with prompts, a default prompt and include_prompt=False (prompt_length input)."""
    return make_tiny_bert(
        tmp_path_factory.mktemp("tiny_prompt") / "model",
        prompts={"query": "query: ", "doc": "passage: "},
        default_prompt_name="query",
        include_prompt=False,
        max_seq_length=16,
    )


@pytest.fixture(scope="session")
def tiny_prompt_artifact(tiny_prompt_model, tmp_path_factory) -> Path:
    return build_artifact(tiny_prompt_model, tmp_path_factory.mktemp("tiny_prompt_art") / "artifact")


@pytest.fixture(scope="session")
def tiny_ce_artifact(tiny_cross_encoder, tmp_path_factory) -> Path:
    """Tiny cross-encoder artifact (logits + scores) with onnx-fp32 and openvino-fp32."""
    return build_artifact(tiny_cross_encoder, tmp_path_factory.mktemp("tiny_ce_art") / "artifact", openvino=True)


@pytest.fixture(scope="session")
def minilm_artifact(minilm_path, tmp_path_factory) -> Path:
    """The fp32 ONNX artifact of the bundled all-MiniLM-L6-v2."""
    return build_artifact(minilm_path, tmp_path_factory.mktemp("minilm_art") / "artifact")
