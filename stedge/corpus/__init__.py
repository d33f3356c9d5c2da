"""Corpus stage: embed a document collection of any size into Parquet shards, resumably, in this process
or on a Ray cluster (`stedge embed-corpus`).

    from stedge.corpus import embed_corpus
    embed_corpus("models/minilm-stedge", ["docs/*.jsonl.gz"], "out/docs", text_column="text", id_column="_id")
"""

from __future__ import annotations

__all__ = ["embed_corpus", "read_corpus"]


def __getattr__(name: str):
    # Lazy: the CLI imports this package without paying for numpy/pyarrow.
    if name == "embed_corpus":
        from .local import embed_corpus

        return embed_corpus
    if name == "read_corpus":
        from .shards import read_corpus

        return read_corpus
    raise AttributeError(name)
