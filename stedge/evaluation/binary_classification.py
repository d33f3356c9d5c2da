"""BinaryClassificationEvaluator: is a pair similar (1) or not (0)? Accuracy, F1 and AP at the best threshold."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..errors import StedgeError
from .base import Evaluator, encode_unique, pairwise_scores, similarity_fn_names_for


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Average precision of ranking by ``scores`` (higher = more likely positive); ties grouped
    the way scikit-learn's average_precision_score groups them."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order].astype(np.float64)
    tp = np.cumsum(y)
    # the last index of each run of equal scores is a threshold
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]
    tp_t = tp[last]
    precision = tp_t / (last + 1)
    recall = tp_t / max(tp[-1], 1)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


# Threshold search. A threshold can only separate different scores, so only the cuts between groups of
# equal scores are tried (a cut inside a tie reports an accuracy no threshold reaches); the cut that calls
# every pair dissimilar counts too. Thresholds sit halfway between neighbouring groups (on the group's own
# score when the midpoint rounds onto the next group) and classify as similar whatever scores at least as
# high (as low, for distances). sentence-transformers uses the same rule from 6.2 on.
def _cuts(scores: np.ndarray, labels: np.ndarray, high_is_similar: bool):
    """Sorted scores and labels (most similar first), the group ends and each cut's threshold."""
    order = np.argsort(-scores if high_is_similar else scores, kind="stable")
    s, y = scores[order], labels[order]
    ends = np.r_[np.flatnonzero(s[:-1] != s[1:]), len(s) - 1]
    nxt = s[np.minimum(ends + 1, len(s) - 1)]
    mid = (s[ends] + nxt) / 2
    thresholds = np.where((ends == len(s) - 1) | (mid == nxt), s[ends], mid)
    return s, y, ends, thresholds


def best_accuracy(scores: np.ndarray, labels: np.ndarray, high_is_similar: bool) -> tuple[float, float]:
    """(best accuracy, its threshold) over every cut between groups of equal scores, all-dissimilar included."""
    s, y, ends, thresholds = _cuts(scores, labels, high_is_similar)
    n = len(y)
    negatives = int((y == 0).sum())
    acc = (np.cumsum(y == 1)[ends] + negatives - np.cumsum(y == 0)[ends]) / n
    none_similar = negatives / n
    i = int(np.argmax(acc))
    if acc[i] > none_similar:
        return float(acc[i]), float(thresholds[i])
    dtype = np.result_type(scores.dtype, np.float16)
    return float(none_similar), float(np.nextafter(s[0], np.inf if high_is_similar else -np.inf, dtype=dtype))


def best_f1(scores: np.ndarray, labels: np.ndarray, high_is_similar: bool) -> tuple[float, float, float, float]:
    """(best F1, its precision, its recall, threshold) over every cut between groups of equal scores."""
    s, y, ends, thresholds = _cuts(scores, labels, high_is_similar)
    correct = np.cumsum(y == 1)[ends].astype(np.float64)
    if correct.max() == 0:
        return 0.0, 0.0, 0.0, 0.0
    precision = correct / (ends + 1)
    recall = correct / (y == 1).sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(correct > 0, 2 * precision * recall / (precision + recall), 0.0)
    i = int(np.argmax(f1))
    return float(f1[i]), float(precision[i]), float(recall[i]), float(thresholds[i])


class BinaryClassificationEvaluator(Evaluator):
    """For labelled pairs (1 = similar/duplicate, 0 = not): the best accuracy and F1 over all
    thresholds of the pair similarity, precision/recall at the F1 threshold, and average precision.

    Metrics per similarity function (the model's, else cosine): ``<fn>_accuracy``,
    ``<fn>_accuracy_threshold``, ``<fn>_f1``, ``<fn>_f1_threshold``, ``<fn>_precision``,
    ``<fn>_recall``, ``<fn>_ap`` (primary). Euclidean and manhattan use distances (lower = similar),
    so their thresholds are distances, as in sentence-transformers.
    """

    csv_prefix = "binary_classification_evaluation"

    def __init__(
        self,
        sentences1: Sequence[str],
        sentences2: Sequence[str],
        labels: Sequence[int],
        name: str = "",
        batch_size: int = 32,
        similarity_fn_names: Sequence[str] | None = None,
        prompt_name: str | None = None,
        show_progress_bar: bool | None = None,
        write_csv: bool = True,
    ) -> None:
        super().__init__(name=name, batch_size=batch_size, show_progress_bar=show_progress_bar, write_csv=write_csv)
        if not (len(sentences1) == len(sentences2) == len(labels)):
            raise StedgeError(
                f"BinaryClassificationEvaluator: sentences1 ({len(sentences1)}), sentences2 ({len(sentences2)}) and "
                f"labels ({len(labels)}) differ in length"
            )
        y = np.asarray(labels)
        bad = [i for i, v in enumerate(y.tolist()) if v not in (0, 1)]
        if bad:
            raise StedgeError(f"BinaryClassificationEvaluator: labels must be 0 or 1; row {bad[0]} has {y[bad[0]]!r}")
        if len(y) < 2:
            raise StedgeError("BinaryClassificationEvaluator needs at least 2 labelled pairs")
        self.sentences1, self.sentences2 = list(sentences1), list(sentences2)
        self.labels = y.astype(np.int64)
        self.given_fn_names = list(similarity_fn_names) if similarity_fn_names else None
        self.prompt_name = prompt_name
        self.primary = f"{similarity_fn_names_for(None, self.given_fn_names)[0]}_ap"

    def compute_metrics(self, model: Any) -> dict[str, float]:
        fns = similarity_fn_names_for(model, self.given_fn_names)
        self.primary = f"{fns[0]}_ap"
        n = len(self.sentences1)
        emb = encode_unique(
            model,
            self.sentences1 + self.sentences2,
            batch_size=self.batch_size,
            prompt_name=self.prompt_name,
            show_progress_bar=self.show_progress_bar,
        )
        e1, e2 = emb[:n], emb[n:]
        out: dict[str, float] = {}
        for fn in fns:
            sims = pairwise_scores(e1, e2, fn)
            high = fn in ("cosine", "dot")
            scores = sims if high else -sims  # distances for euclidean/manhattan
            acc, acc_t = best_accuracy(scores, self.labels, high)
            f1, p, r, f1_t = best_f1(scores, self.labels, high)
            out.update(
                {
                    f"{fn}_accuracy": acc,
                    f"{fn}_accuracy_threshold": acc_t,
                    f"{fn}_f1": f1,
                    f"{fn}_precision": p,
                    f"{fn}_recall": r,
                    f"{fn}_f1_threshold": f1_t,
                    f"{fn}_ap": average_precision(self.labels, sims),
                }
            )
        return out
