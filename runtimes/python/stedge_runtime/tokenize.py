"""Tokenization with `tokenizers` and length-sorted batching under a token budget."""

from __future__ import annotations

import itertools
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence, Tuple, Union

import numpy as np

from .errors import ArtifactError, InputError

logger = logging.getLogger("stedge_runtime")

Text = Union[str, Tuple[str, str]]
# Texts tokenized at a time by Tokenizer.tokens. `tokenizers` keeps much per text besides the ids (tokens, offsets,
# the overflow of a truncated text): about 3 KB for an STS-B sentence and 46 KB for a SciFact passage (MiniLM,
# 256 tokens). Only the ids are kept, so one encode call's memory grows with its ids, not with those objects.
TOKENIZE_CHUNK = 128


@dataclass
class Tokens:
    """Token ids of many texts in flat arrays: row i is ``ids[starts[i] : starts[i] + lengths[i]]``."""

    ids: np.ndarray  # int32
    type_ids: np.ndarray | None  # int8, where the graph takes token_type_ids
    starts: np.ndarray  # int64
    lengths: np.ndarray  # int64


class Tokenizer:
    """tokenizer.json with truncation to ``max_length`` (warned once) and no fixed padding."""

    def __init__(self, file: Path, max_length: int, do_lower_case: bool = False) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        if not file.is_file():
            raise ArtifactError(f"{file} is missing: the runtime needs the fast tokenizer file (re-export the model)")
        try:
            tok = HFTokenizer.from_file(str(file))
        except Exception as e:  # tokenizers raises a plain Exception on bad files
            raise ArtifactError(f"{file} could not be read by `tokenizers` ({e})") from None
        self._tok = tok
        self.pad_id = self._pad_id(tok.padding or {})
        tok.no_padding()  # we pad per batch ourselves (tokenizer.json may say Fixed: 128)
        tok.enable_truncation(max_length=max_length, strategy="longest_first")
        self.max_length = max_length
        self.do_lower_case = do_lower_case
        self._warned = False
        self._lock = threading.Lock()

    def _pad_id(self, cfg: dict) -> int:
        """The padding id tokenizer.json declares, else the id of a usual pad token, else 0."""
        if "pad_id" in cfg:
            return int(cfg["pad_id"])
        for t in ("[PAD]", "<pad>", "<|pad|>", "<|endoftext|>", "</s>"):
            i = self._tok.token_to_id(t)
            if i is not None:
                return i
        return 0

    def encode(self, items: Sequence[Text]) -> list:
        """Encodings (ids, type_ids) of texts or (a, b) pairs, truncated to max_length."""
        if self.do_lower_case:
            items = [t.lower() if isinstance(t, str) else (t[0].lower(), t[1].lower()) for t in items]
        try:
            if len(items) == 1:  # one text: `encode` (encode_batch took 0.02-0.04 ms more per query, Zen 4)
                one = items[0]
                encs = [self._tok.encode(one) if isinstance(one, str) else self._tok.encode(*one)]
            else:
                encs = self._tok.encode_batch(list(items))
        except TypeError:  # `tokenizers` says only "TextEncodeInput must be ...": find the text at fault
            _check_unicode(items)
            raise
        if not self._warned:
            for e in encs:
                if e.overflowing:
                    with self._lock:
                        if not self._warned:
                            self._warned = True
                            logger.warning(
                                "A text is longer than max_seq_length=%d tokens: it is truncated (this warning is "
                                "shown once).",
                                self.max_length,
                            )
                    break
        return encs

    def tokens(self, items: Sequence[Text], type_ids: bool = False) -> Tokens:
        """The ids (and ``type_ids``) of texts or (a, b) pairs, truncated to max_length, tokenized
        TOKENIZE_CHUNK at a time (see there)."""
        ids, tts, lengths = [], [], []
        for i in range(0, len(items), TOKENIZE_CHUNK):
            encs = self.encode(items[i : i + TOKENIZE_CHUNK])
            n = np.fromiter((len(e.ids) for e in encs), dtype=np.int64, count=len(encs))
            total = int(n.sum())
            ids.append(np.fromiter(itertools.chain.from_iterable(e.ids for e in encs), dtype=np.int32, count=total))
            if type_ids:
                tt = itertools.chain.from_iterable(e.type_ids for e in encs)
                tts.append(np.fromiter(tt, dtype=np.int8, count=total))
            lengths.append(n)
        lens = np.concatenate(lengths or [np.zeros(0, np.int64)])
        starts = np.zeros(len(lens), dtype=np.int64)
        np.cumsum(lens[:-1], out=starts[1:])
        flat = np.concatenate(ids or [np.zeros(0, np.int32)])
        return Tokens(flat, np.concatenate(tts or [np.zeros(0, np.int8)]) if type_ids else None, starts, lens)

    def one(self, item: Text, type_ids: bool = False) -> dict[str, np.ndarray]:
        """The int64 inputs of one text or (a, b) pair as a batch of one row: what `tokens` and `pad` give for it,
        without their flat arrays and index arithmetic, which cost a one-text call (an app's query) 0.08-0.13 ms, 6-7 %
        of its time, right after an engine call has cooled the caches (runtimes/python/README.md, "Speed notes")."""
        e = self.encode([item])[0]
        ids = np.array(e.ids, dtype=np.int64)[None]
        out = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        if type_ids:
            out["token_type_ids"] = np.array(e.type_ids, dtype=np.int64)[None]
        return out


def _check_unicode(items: Sequence[Text]) -> None:
    """Raise InputError naming the first text that is not valid Unicode (a lone surrogate)."""
    for i, t in enumerate(items):
        for part in (t,) if isinstance(t, str) else tuple(t):
            try:
                part.encode("utf-8")
            except UnicodeEncodeError as e:
                raise InputError(
                    f"text {i} ({part[:40]!r}) is not valid Unicode: character {e.start} is a lone surrogate, as "
                    "Python makes of bytes that are not UTF-8; convert the input to UTF-8"
                ) from None
            except AttributeError:
                continue


def batches(lengths: np.ndarray, batch_size: int, max_tokens: int) -> Iterator[np.ndarray]:
    """Indices of rows of these token ``lengths``, longest first, grouped so a batch has <= batch_size rows and
    rows x longest length <= max_tokens (a single row may exceed it)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) <= batch_size and len(lengths) * int(lengths.max()) <= max_tokens:
        yield np.arange(len(lengths))  # one batch: no sorting needed
        return
    order = np.argsort(-lengths, kind="stable")
    start = 0
    while start < len(order):
        longest = int(lengths[order[start]])
        n = max(1, min(batch_size, max_tokens // max(longest, 1)))
        yield order[start : start + n]
        start += n


def pad(tokens: Tokens, idx: np.ndarray, pad_id: int, type_ids: bool) -> dict[str, np.ndarray]:
    """int64 input_ids / attention_mask (/ token_type_ids) for the rows ``idx``, padded to the longest."""
    lengths = tokens.lengths[idx]
    width = int(lengths.max())
    pos = np.arange(width)
    keep = pos < lengths[:, None]  # row-major, so it lines up with the rows' ids one after another
    src = (tokens.starts[idx][:, None] + pos)[keep]
    ids = np.full((len(idx), width), pad_id, dtype=np.int64)
    ids[keep] = tokens.ids[src]
    out = {"input_ids": ids, "attention_mask": keep.astype(np.int64)}
    if type_ids:
        tt = np.zeros((len(idx), width), dtype=np.int64)
        if tokens.type_ids is not None:
            tt[keep] = tokens.type_ids[src]
        out["token_type_ids"] = tt
    return out
