"""CachedMultipleNegativesRankingLoss: MNRL with a gradient cache (GradCache), for large batches in small memory.

1. Embed every column in mini-batches without autograd (saving each mini-batch's RNG state so
   dropout is replayed identically later).
2. Compute the loss on those embeddings with autograd and take its gradient with respect to the
   embeddings only (cheap: no model activations are kept).
3. When the trainer calls ``loss.backward()``, re-run each mini-batch with autograd and back-
   propagate the cached embedding gradients into the model, one mini-batch at a time.

The gradients equal MultipleNegativesRankingLoss's on the whole batch; memory grows with
``mini_batch_size`` instead of the batch size.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn

from ...errors import StedgeError
from ...models.similarity import check_similarity_fn_name
from .base import Loss
from .multiple_negatives_ranking import ranking_loss

EmbeddingLoss = Callable[[list[Tensor], "Tensor | None"], Tensor]


class RandContext:
    """Snapshot of the CPU (and CUDA) random state, to replay dropout exactly on re-forward."""

    def __init__(self) -> None:
        self.cpu_state = torch.get_rng_state()
        self.cuda_states = (
            torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
        )

    @contextmanager
    def replay(self) -> Iterator[None]:
        devices = list(range(len(self.cuda_states))) if self.cuda_states is not None else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.cpu_state)
            if self.cuda_states is not None:
                torch.cuda.set_rng_state_all(self.cuda_states)
            yield


def _slice_features(features: dict[str, Tensor], start: int, end: int) -> dict[str, Tensor]:
    return {k: (v[start:end] if isinstance(v, Tensor) and v.dim() > 0 else v) for k, v in features.items()}


def _batch_len(features: dict[str, Tensor]) -> int:
    for v in features.values():
        if isinstance(v, Tensor) and v.dim() > 0:
            return int(v.shape[0])
    raise StedgeError("CachedMultipleNegativesRankingLoss: a features dict holds no batched tensor")


class CachedMultipleNegativesRankingLoss(Loss):
    """MultipleNegativesRankingLoss computed with a gradient cache: same loss and gradients,
    model activations held for ``mini_batch_size`` rows at a time."""

    min_inputs = 2
    max_inputs = None
    needs_label = False

    def __init__(
        self, model: nn.Module, scale: float = 20.0, similarity_fn_name: str = "cosine", mini_batch_size: int = 32
    ) -> None:
        super().__init__(model)
        if scale <= 0:
            raise StedgeError(f"CachedMultipleNegativesRankingLoss: scale must be > 0, got {scale}")
        if int(mini_batch_size) < 1:
            raise StedgeError(
                f"CachedMultipleNegativesRankingLoss: mini_batch_size must be >= 1, got {mini_batch_size}"
            )
        self.scale = float(scale)
        self.similarity_fn_name = check_similarity_fn_name(similarity_fn_name)
        self.mini_batch_size = int(mini_batch_size)

    def compute_loss_from_embeddings(self, embeddings: list[Tensor], labels: Tensor | None = None) -> Tensor:
        return ranking_loss(embeddings, self.scale, self.similarity_fn_name)

    # ------------------------------------------------------------- grad cache
    def _embed_without_grad(self, features: dict[str, Tensor]) -> tuple[list[Tensor], list[RandContext]]:
        reps, states = [], []
        n = _batch_len(features)
        for start in range(0, n, self.mini_batch_size):
            mb = _slice_features(features, start, start + self.mini_batch_size)
            states.append(RandContext())
            with torch.no_grad():
                reps.append(self.model(mb)["sentence_embedding"].detach())
        return reps, states

    def forward(
        self,
        sentence_features: list[dict[str, Tensor]],
        labels: Tensor | None = None,
        embedding_loss: EmbeddingLoss | None = None,
    ) -> Tensor:
        """The loss; its backward runs the cached mini-batch backward passes.

        ``embedding_loss(embeddings, labels)`` replaces the ranking loss on the full-batch
        embeddings (MatryoshkaLoss uses it to sum the loss over truncated dimensions).
        """
        features = list(sentence_features)
        self.check_inputs(len(features), labels is not None)
        loss_fn = embedding_loss or self.compute_loss_from_embeddings
        cached = [self._embed_without_grad(f) for f in features]
        if not torch.is_grad_enabled():
            return loss_fn([torch.cat(reps) for reps, _ in cached], labels)
        full = [torch.cat(reps).requires_grad_() for reps, _ in cached]
        with torch.enable_grad():
            loss = loss_fn(full, labels)
            grads = torch.autograd.grad(loss, full, allow_unused=True)
        grads = [g if g is not None else torch.zeros_like(e) for g, e in zip(grads, full)]
        out = loss.detach().requires_grad_()
        out.register_hook(lambda grad_output: self._backward(features, cached, grads, grad_output))
        return out

    def _backward(self, features: list[dict[str, Tensor]], cached, grads: list[Tensor], grad_output: Tensor) -> None:
        """Re-forward each mini-batch with autograd and push the cached gradients through the model."""
        with torch.enable_grad():
            for f, (reps, states), g in zip(features, cached, grads):
                for i, (rep, state) in enumerate(zip(reps, states)):
                    start = i * self.mini_batch_size
                    mb = _slice_features(f, start, start + rep.shape[0])
                    with state.replay():
                        emb = self.model(mb)["sentence_embedding"]
                    g_mb = g[start : start + rep.shape[0]] * grad_output
                    # d/dθ of <emb, g> equals the cached gradient pushed through the model.
                    surrogate = torch.sum(emb * g_mb.to(emb.dtype))
                    surrogate.backward()

    def get_config_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "similarity_fct": self.similarity_fn_name, "mini_batch_size": self.mini_batch_size}
