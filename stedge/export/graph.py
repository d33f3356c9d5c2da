"""Torch wrappers that put the whole model into one exportable graph.

* ``EmbeddingGraph``: Transformer -> Pooling -> [Dense] -> [Normalize] (-> truncate_dim), returning
  ``sentence_embedding`` and the token embeddings under ``last_hidden_state`` (what optimum reads).
* ``RerankerGraph``: a sequence-classification model returning raw ``logits`` and ``scores``
  (the activation applied).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import InvalidModelError


@dataclass
class GraphSpec:
    """Names of a graph's inputs and outputs and its dynamic axes (for torch.onnx.export)."""

    inputs: list[str]
    outputs: list[str]
    dynamic_axes: dict[str, dict[int, str]]


class EmbeddingGraph(nn.Module):
    """A SentenceEncoder as one graph: token ids in, sentence embedding and token embeddings out."""

    def __init__(self, encoder: nn.Module, use_token_type_ids: bool, use_prompt_length: bool) -> None:
        super().__init__()
        self.encoder = encoder
        self.use_token_type_ids = use_token_type_ids
        self.use_prompt_length = use_prompt_length
        self.truncate_dim = getattr(encoder, "truncate_dim", None)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *extra: torch.Tensor):
        features = {"input_ids": input_ids, "attention_mask": attention_mask}
        rest = list(extra)
        if self.use_token_type_ids:
            features["token_type_ids"] = rest.pop(0)
        if self.use_prompt_length:
            features["prompt_length"] = rest.pop(0)
        out = self.encoder(features)
        emb = out["sentence_embedding"]
        if self.truncate_dim:
            emb = emb[:, : self.truncate_dim]
        return emb, out["token_embeddings"]


class RerankerGraph(nn.Module):
    """A CrossEncoder as one graph: pair token ids in, ``logits`` and ``scores`` out."""

    def __init__(self, cross_encoder: nn.Module, use_token_type_ids: bool) -> None:
        super().__init__()
        self.model = cross_encoder.model
        self.activation = cross_encoder.activation
        self.use_token_type_ids = use_token_type_ids

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *extra: torch.Tensor):
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.use_token_type_ids:
            kwargs["token_type_ids"] = extra[0]
        logits = self.model(**kwargs, return_dict=True).logits
        return logits, self.activation(logits)


def reranker_uses_token_type_ids(cross_encoder: nn.Module) -> bool:
    """Whether the classification model takes token_type_ids with more than one type."""
    import inspect

    params = inspect.signature(cross_encoder.model.forward).parameters
    return "token_type_ids" in params and getattr(cross_encoder.model.config, "type_vocab_size", 0) > 1


def build_graph(model: nn.Module, task: str) -> tuple[nn.Module, GraphSpec]:
    """The exportable wrapper for a SentenceEncoder (task 'embedding') or CrossEncoder ('reranking')."""
    batch_seq = {0: "batch_size", 1: "sequence_length"}
    if task == "embedding":
        t = model.transformer
        pooling = model.pooling
        use_tt = bool(t.uses_token_type_ids)
        use_pl = pooling is not None and not pooling.include_prompt
        inputs = (
            ["input_ids", "attention_mask"]
            + (["token_type_ids"] if use_tt else [])
            + (["prompt_length"] if use_pl else [])
        )
        axes = {n: dict(batch_seq) for n in inputs if n != "prompt_length"}
        if use_pl:
            axes["prompt_length"] = {0: "batch_size"}
        axes["sentence_embedding"] = {0: "batch_size"}
        axes["last_hidden_state"] = dict(batch_seq)
        if pooling is None:
            raise InvalidModelError("the model has no Pooling module: stedge exports sentence encoders with pooling")
        spec = GraphSpec(inputs, ["sentence_embedding", "last_hidden_state"], axes)
        return EmbeddingGraph(model, use_tt, use_pl).eval(), spec
    if task == "reranking":
        use_tt = reranker_uses_token_type_ids(model)
        inputs = ["input_ids", "attention_mask"] + (["token_type_ids"] if use_tt else [])
        axes = {n: dict(batch_seq) for n in inputs}
        axes["logits"] = {0: "batch_size"}
        axes["scores"] = {0: "batch_size"}
        return RerankerGraph(model, use_tt).eval(), GraphSpec(inputs, ["logits", "scores"], axes)
    raise InvalidModelError(f"unknown task {task!r}: expected 'embedding' or 'reranking'")


def example_inputs(model: nn.Module, task: str, spec: GraphSpec) -> tuple[torch.Tensor, ...]:
    """A small tokenized batch (two texts of different length) in the graph's input order."""
    if task == "embedding":
        feats = model.tokenize(
            ["stedge exports sentence encoders", "a longer second text, so that padding shows up in the batch"]
        )
    else:
        feats = model.tokenize(
            [
                ("what is stedge", "stedge exports rerankers"),
                ("query", "a longer document text so that padding shows up"),
            ]
        )
    batch = feats["input_ids"].shape[0]
    out = []
    for name in spec.inputs:
        if name == "prompt_length":
            out.append(torch.ones(batch, dtype=torch.long))
        elif name == "token_type_ids" and name not in feats:
            out.append(torch.zeros_like(feats["input_ids"]))
        else:
            out.append(feats[name].to(torch.long))
    return tuple(t.cpu() for t in out)
