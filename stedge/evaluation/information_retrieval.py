"""InformationRetrievalEvaluator: rank a corpus for each query; NDCG, MRR, MAP, recall, precision, accuracy@k.

Also ``load_beir(folder, split)`` for BEIR-layout data (corpus.jsonl, queries.jsonl, qrels/<split>.tsv).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..errors import StedgeError, runtime_input_errors
from .base import Evaluator, all_pairs_scores, encode, similarity_fn_names_for


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, values) of the k largest entries of each row, sorted descending."""
    k = min(k, scores.shape[1])
    if k < scores.shape[1]:
        idx = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        idx = np.broadcast_to(np.arange(scores.shape[1]), scores.shape).copy()
    vals = np.take_along_axis(scores, idx, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    return np.take_along_axis(idx, order, axis=1), np.take_along_axis(vals, order, axis=1)


def ranking_metrics(
    ranked: Sequence[Sequence[Any]],
    relevant: Sequence[set],
    accuracy_at_k: Iterable[int] = (1, 3, 5, 10),
    precision_recall_at_k: Iterable[int] = (1, 3, 5, 10),
    mrr_at_k: Iterable[int] = (10,),
    ndcg_at_k: Iterable[int] = (10,),
    map_at_k: Iterable[int] = (100,),
) -> dict[str, float]:
    """Mean IR metrics over queries from each query's ranked doc ids and its set of relevant ids.

    Binary relevance; MAP@k divides by min(k, number of relevant docs), as BEIR and
    sentence-transformers do.
    """
    if not ranked:
        raise StedgeError("no queries to evaluate")
    sums: dict[str, float] = {}

    def add(key: str, v: float) -> None:
        sums[key] = sums.get(key, 0.0) + v

    for hits, rel in zip(ranked, relevant):
        flags = np.array([h in rel for h in hits], dtype=np.float64)
        for k in accuracy_at_k:
            add(f"accuracy@{k}", float(flags[:k].any()))
        for k in precision_recall_at_k:
            n = flags[:k].sum()
            add(f"precision@{k}", n / k)
            add(f"recall@{k}", n / len(rel))
        for k in mrr_at_k:
            first = np.flatnonzero(flags[:k])
            add(f"mrr@{k}", 1.0 / (first[0] + 1) if len(first) else 0.0)
        for k in ndcg_at_k:
            disc = 1.0 / np.log2(np.arange(2, k + 2))
            dcg = float((flags[:k] * disc[: len(flags[:k])]).sum())
            idcg = float(disc[: min(len(rel), k)].sum())
            add(f"ndcg@{k}", dcg / idcg)
        for k in map_at_k:
            f = flags[:k]
            prec = np.cumsum(f) / np.arange(1, len(f) + 1)
            add(f"map@{k}", float((prec * f).sum()) / min(k, len(rel)))
    return {key: v / len(ranked) for key, v in sums.items()}


class InformationRetrievalEvaluator(Evaluator):
    """Retrieval quality: each query's top documents from the whole corpus, scored in chunks.

    ``queries``: qid -> text, ``corpus``: doc id -> text, ``relevant_docs``: qid -> set of doc ids.
    Queries with no relevant document are skipped. Metrics per similarity function (the model's,
    else cosine): ``<fn>_accuracy@k``, ``<fn>_precision@k``, ``<fn>_recall@k``, ``<fn>_mrr@10``,
    ``<fn>_ndcg@10`` (primary), ``<fn>_map@100``.

    ``precision`` int8/uint8/binary/ubinary stores the corpus quantized (stedge_runtime.quantization)
    and retrieves with float queries through ``stedge_runtime.search``; with ``rescore_multiplier`` M
    the top k (k = the largest NDCG cut-off, 10) come from rescoring the best M * k candidates, as
    an app asking for k hits would do; ``ranges`` are the int8/uint8 calibration
    (default: the model's saved ranges, else the corpus's own). ``search_seconds`` then holds the time
    the search took, ``ranges_source`` where the ranges came from.
    """

    csv_prefix = "Information-Retrieval_evaluation"

    def __init__(
        self,
        queries: Mapping[str, str],
        corpus: Mapping[str, str],
        relevant_docs: Mapping[str, Iterable[str]],
        name: str = "",
        batch_size: int = 32,
        corpus_chunk_size: int = 50000,
        mrr_at_k: Sequence[int] = (10,),
        ndcg_at_k: Sequence[int] = (10,),
        accuracy_at_k: Sequence[int] = (1, 3, 5, 10),
        precision_recall_at_k: Sequence[int] = (1, 3, 5, 10),
        map_at_k: Sequence[int] = (100,),
        similarity_fn_names: Sequence[str] | None = None,
        query_prompt_name: str | None = None,
        query_prompt: str | None = None,
        corpus_prompt_name: str | None = None,
        corpus_prompt: str | None = None,
        show_progress_bar: bool | None = None,
        write_csv: bool = True,
        precision: str = "float32",
        rescore_multiplier: int | None = None,
        ranges: np.ndarray | None = None,
    ) -> None:
        super().__init__(name=name, batch_size=batch_size, show_progress_bar=show_progress_bar, write_csv=write_csv)
        from stedge_runtime.quantization import check_precision

        with runtime_input_errors():
            self.precision = check_precision(precision)
        if rescore_multiplier is not None and (not isinstance(rescore_multiplier, int) or rescore_multiplier < 0):
            raise StedgeError(
                f"rescore_multiplier must be an integer >= 1 (0/None: no rescoring), got {rescore_multiplier!r}"
            )
        if rescore_multiplier and precision == "float32":
            raise StedgeError(
                "rescore_multiplier applies to a quantized corpus: pass precision int8, uint8, binary or ubinary"
            )
        self.rescore_multiplier = rescore_multiplier or None
        self.ranges = ranges
        self.ranges_source: str | None = None
        self.search_seconds: float | None = None
        rel = {str(q): {str(d) for d in docs} for q, docs in relevant_docs.items()}
        self.query_ids = [str(q) for q in queries if str(q) in rel and rel[str(q)]]
        if not self.query_ids:
            raise StedgeError(
                "InformationRetrievalEvaluator: no query has a relevant document (check the ids in relevant_docs "
                "against the queries)"
            )
        if not corpus:
            raise StedgeError("InformationRetrievalEvaluator: the corpus is empty")
        qtext = {str(q): t for q, t in queries.items()}
        self.queries = [qtext[q] for q in self.query_ids]
        self.corpus_ids = [str(c) for c in corpus]
        self.corpus = list(corpus.values())
        self.relevant_docs = rel
        self.corpus_chunk_size = int(corpus_chunk_size)
        self.ks = {
            "accuracy_at_k": list(accuracy_at_k),
            "precision_recall_at_k": list(precision_recall_at_k),
            "mrr_at_k": list(mrr_at_k),
            "ndcg_at_k": list(ndcg_at_k),
            "map_at_k": list(map_at_k),
        }
        self.max_k = max(max(v) for v in self.ks.values())
        self.given_fn_names = list(similarity_fn_names) if similarity_fn_names else None
        self.query_prompt_name, self.query_prompt = query_prompt_name, query_prompt
        self.corpus_prompt_name, self.corpus_prompt = corpus_prompt_name, corpus_prompt
        first = similarity_fn_names_for(None, self.given_fn_names)[0]
        self.primary = f"{first}_ndcg@{max(self.ks['ndcg_at_k'])}"

    def rank(self, model: Any, corpus_embeddings: np.ndarray | None = None) -> dict[str, list[list[tuple[str, float]]]]:
        """Top ``max_k`` (doc id, score) per query, for each similarity function.

        With a quantized ``precision`` the corpus is quantized and searched with
        ``stedge_runtime.search`` (first similarity function only, see ``_rank_quantized``).
        """
        fns = similarity_fn_names_for(model, self.given_fn_names)
        q_emb = encode(
            model,
            self.queries,
            batch_size=self.batch_size,
            prompt_name=self.query_prompt_name,
            prompt=self.query_prompt,
        )
        if self.precision != "float32":
            return self._rank_quantized(model, fns[0], q_emb, corpus_embeddings)
        return self._rank_float(model, fns, q_emb, corpus_embeddings)

    def _encode_corpus(self, model: Any, start: int, end: int, progress: Any, task: Any) -> np.ndarray:
        def enc(s: int, e: int) -> np.ndarray:
            return encode(
                model,
                self.corpus[s:e],
                batch_size=self.batch_size,
                prompt_name=self.corpus_prompt_name,
                prompt=self.corpus_prompt,
            )

        if progress is None:
            return enc(start, end)
        parts = []
        step = max(self.batch_size * 8, 1)
        for s in range(start, end, step):
            e = min(s + step, end)
            parts.append(enc(s, e))
            progress.update(task, completed=e)
        return np.concatenate(parts)

    def _rank_quantized(
        self, model: Any, fn: str, q_emb: np.ndarray, corpus_embeddings: np.ndarray | None
    ) -> dict[str, list[list[tuple[str, float]]]]:
        """Quantize the whole corpus (float embeddings, L2-normalized for cosine) to ``precision`` and
        search it exactly with the float queries, rescoring when ``rescore_multiplier`` is set.

        int8/uint8 ranges: ``ranges`` when given, else the model's saved calibration
        (``embedding_ranges`` of a calibrated artifact), else the corpus embeddings' own.
        """
        import time

        from stedge_runtime.quantization import calibration_ranges, quantize_embeddings
        from stedge_runtime.search import search

        if fn not in ("cosine", "dot"):
            raise StedgeError(
                f"precision {self.precision!r} searches by dot product / Hamming distance; "
                f"the similarity function {fn!r} is not supported (use cosine or dot)"
            )
        if corpus_embeddings is None:
            corpus_embeddings = self._with_progress(lambda p, t: self._encode_corpus(model, 0, len(self.corpus), p, t))
        c_emb = np.asarray(corpus_embeddings, dtype=np.float32)
        if fn == "cosine":
            q_emb = q_emb / np.maximum(np.linalg.norm(q_emb, axis=1, keepdims=True), 1e-12)
            c_emb = c_emb / np.maximum(np.linalg.norm(c_emb, axis=1, keepdims=True), 1e-12)
        ranges, self.ranges_source = self.ranges, ("given" if self.ranges is not None else None)
        if self.precision in ("int8", "uint8") and ranges is None:
            ranges = getattr(model, "embedding_ranges", None)
            self.ranges_source = "model" if ranges is not None else "corpus"
            if ranges is None:
                ranges = calibration_ranges(c_emb)
        with runtime_input_errors():
            stored = quantize_embeddings(c_emb, self.precision, ranges=ranges)
            t0 = time.perf_counter()
            res = search(q_emb, stored, self.precision, top_k=self.max_k, ranges=ranges)
            self.search_seconds = time.perf_counter() - t0
        rows = [list(zip(ri.tolist(), rv.tolist())) for ri, rv in zip(res.indices, res.scores)]
        if self.rescore_multiplier:
            # As an app asking for the top k (k = the largest NDCG cut-off) would: rescore M * k candidates;
            # the rest of the ranking (for MAP@100 and the like) keeps the quantized order.
            k = max(self.ks["ndcg_at_k"])
            t0 = time.perf_counter()
            with runtime_input_errors():
                top = search(
                    q_emb, stored, self.precision, top_k=k, ranges=ranges, rescore_multiplier=self.rescore_multiplier
                )
            self.search_seconds = time.perf_counter() - t0
            for r, (ti, tv) in enumerate(zip(top.indices, top.scores)):
                head = set(ti.tolist())
                rest = [h for h in rows[r] if h[0] not in head][: self.max_k - len(head)]
                rows[r] = list(zip(ti.tolist(), tv.tolist())) + rest
        return {fn: [[(self.corpus_ids[i], float(v)) for i, v in row] for row in rows]}

    def _with_progress(self, work: Any) -> Any:
        from ..progress import make_progress

        show = self.show_progress_bar if self.show_progress_bar is not None else False
        progress = make_progress(transient=True) if show else None
        if progress is None:
            return work(None, None)
        progress.start()
        try:
            return work(progress, progress.add_task("Encoding corpus", total=len(self.corpus)))
        finally:
            progress.stop()

    def _rank_float(
        self, model: Any, fns: list[str], q_emb: np.ndarray, corpus_embeddings: np.ndarray | None
    ) -> dict[str, list[list[tuple[str, float]]]]:
        best: dict[str, tuple[np.ndarray, np.ndarray] | None] = {fn: None for fn in fns}

        def work(progress: Any, task: Any) -> None:
            for start in range(0, len(self.corpus), self.corpus_chunk_size):
                end = min(start + self.corpus_chunk_size, len(self.corpus))
                if corpus_embeddings is not None:
                    c_emb = np.asarray(corpus_embeddings[start:end], dtype=np.float32)
                else:
                    c_emb = self._encode_corpus(model, start, end, progress, task)
                for fn in fns:
                    idx, vals = top_k(all_pairs_scores(q_emb, c_emb, fn), self.max_k)
                    idx = idx + start
                    prev = best[fn]
                    if prev is not None:
                        idx = np.concatenate([prev[0], idx], axis=1)
                        vals = np.concatenate([prev[1], vals], axis=1)
                        keep, _ = top_k(vals, self.max_k)
                        idx = np.take_along_axis(idx, keep, axis=1)
                        vals = np.take_along_axis(vals, keep, axis=1)
                    best[fn] = (idx, vals)

        self._with_progress(work)
        out = {}
        for fn, (idx, vals) in best.items():  # type: ignore[misc]
            out[fn] = [
                [(self.corpus_ids[i], float(v)) for i, v in zip(row_i, row_v)] for row_i, row_v in zip(idx, vals)
            ]
        return out

    def compute_metrics(self, model: Any, corpus_embeddings: np.ndarray | None = None) -> dict[str, float]:
        results = self.rank(model, corpus_embeddings)
        fns = list(results)
        self.primary = f"{fns[0]}_ndcg@{max(self.ks['ndcg_at_k'])}"
        relevant = [self.relevant_docs[q] for q in self.query_ids]
        out = {}
        for fn, ranked in results.items():
            m = ranking_metrics([[d for d, _ in hits] for hits in ranked], relevant, **self.ks)
            out.update({f"{fn}_{k}": v for k, v in m.items()})
        return out

    def get_config_dict(self) -> dict[str, Any]:
        cfg = {
            k: v
            for k, v in (("query_prompt_name", self.query_prompt_name), ("corpus_prompt_name", self.corpus_prompt_name))
            if v
        }
        if self.precision != "float32":
            cfg.update(precision=self.precision, rescore_multiplier=self.rescore_multiplier)
        return cfg

    @classmethod
    def from_beir(
        cls, folder: str | os.PathLike, split: str = "test", name: str | None = None, **kwargs: Any
    ) -> "InformationRetrievalEvaluator":
        """An evaluator over a BEIR-layout folder (see ``load_beir``)."""
        queries, corpus, qrels = load_beir(folder, split)
        return cls(queries, corpus, qrels, name=name if name is not None else f"{Path(folder).name}-{split}", **kwargs)


def _read_jsonl(path: Path) -> list[dict]:
    import gzip
    import json

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:  # type: ignore[operator]
        return [json.loads(line) for line in f if line.strip()]


def _find(folder: Path, stem: str) -> Path:
    for cand in (folder / stem, folder / f"{stem}.gz"):
        if cand.exists():
            return cand
    raise StedgeError(
        f"{folder}: no {stem} or {stem}.gz (a BEIR folder has corpus.jsonl, queries.jsonl and qrels/<split>.tsv)"
    )


def load_beir(
    folder: str | os.PathLike, split: str = "test"
) -> tuple[dict[str, str], dict[str, str], dict[str, set[str]]]:
    """(queries, corpus, relevant_docs) from a BEIR-layout folder, gz or not.

    Documents are ``title + " " + text`` (just the text when there is no title); ids are
    strings; only the queries that appear in ``qrels/<split>.tsv`` with score > 0 are kept.
    """
    import csv
    import gzip
    import io

    from ..data import resolve_data_path

    root = resolve_data_path(folder)
    if not root.is_dir():
        raise StedgeError(f"BEIR folder {folder} not found")
    corpus = {}
    for row in _read_jsonl(_find(root, "corpus.jsonl")):
        title = (row.get("title") or "").strip()
        text = row.get("text") or ""
        corpus[str(row["_id"])] = f"{title} {text}".strip() if title else text
    all_queries = {str(r["_id"]): r["text"] for r in _read_jsonl(_find(root, "queries.jsonl"))}
    qrels_path = _find(root / "qrels", f"{split}.tsv")
    raw = gzip.open(qrels_path, "rb") if qrels_path.suffix == ".gz" else open(qrels_path, "rb")
    relevant: dict[str, set[str]] = {}
    with io.TextIOWrapper(raw, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        need = {"query-id", "corpus-id", "score"}
        if not need <= set(reader.fieldnames or []):
            raise StedgeError(
                f"{qrels_path}: expected columns query-id, corpus-id, score (found: "
                f"{', '.join(reader.fieldnames or [])})"
            )
        for i, r in enumerate(reader):
            try:
                score = float(r["score"])
            except ValueError:
                raise StedgeError(f"{qrels_path}: row {i + 1}: score {r['score']!r} is not a number") from None
            if score > 0:
                relevant.setdefault(str(r["query-id"]), set()).add(str(r["corpus-id"]))
    missing_q = [q for q in relevant if q not in all_queries]
    if missing_q:
        raise StedgeError(f"{qrels_path}: {len(missing_q)} query ids are not in queries.jsonl (e.g. {missing_q[0]})")
    queries = {q: all_queries[q] for q in all_queries if q in relevant}
    return queries, corpus, relevant
