"""Model references resolve in order: local dir, HF cache, bundled package, Hub."""

from __future__ import annotations

import pytest

from stedge.errors import ModelNotFoundError
from stedge.hub import resolve_model


def test_local_directory_wins(tiny_model):
    assert resolve_model(tiny_model) == tiny_model.resolve()


def test_bundled_names(minilm_path):
    assert resolve_model("all-MiniLM-L6-v2") == minilm_path
    assert resolve_model("sentence-transformers/all-MiniLM-L6-v2") == minilm_path


def test_hf_cache_before_bundled(tmp_path, monkeypatch, tiny_model):
    import shutil

    cache = tmp_path / "hub"
    snap = cache / "models--sentence-transformers--all-MiniLM-L6-v2" / "snapshots" / "abc123"
    snap.parent.mkdir(parents=True)
    shutil.copytree(tiny_model, snap)
    refs = cache / "models--sentence-transformers--all-MiniLM-L6-v2" / "refs"
    refs.mkdir()
    (refs / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    assert resolve_model("all-MiniLM-L6-v2") == snap


def test_unresolvable_lists_what_was_tried(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as e:
        resolve_model("someone/not-a-model")
    msg = str(e.value)
    assert "local directory" in msg and "Hugging Face cache" in msg and "offline" in msg
