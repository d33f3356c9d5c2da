"""Training data: load datasets from anything people have, then check them against the loss.

Sources: a ``datasets.Dataset`` / ``DatasetDict``, a dict of columns (``{"anchor": [...], ...}``),
a list of row dicts, a local CSV/TSV/JSON/JSONL/Parquet file (``.gz`` ok), a folder written by
``Dataset.save_to_disk``, or a `datasets` Hub name (``name[:config][@split]``). A dict whose values
are themselves sources is a multi-dataset (``DatasetDict``).

Format rules: a column named ``label`` or ``score`` is the label; every other column is an input,
in order, and their count must fit the loss.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import StedgeError, require

LABEL_COLUMNS = ("label", "score")
DATASET_NAME_COLUMN = "dataset_name"


def _datasets():
    return require("datasets", "train", "training")


def _is_columns_dict(obj: Mapping) -> bool:
    return bool(obj) and all(isinstance(v, (list, tuple)) for v in obj.values())


def load_dataset(source: Any, split: str | None = None, name: str | None = None):
    """Load one training source into a ``datasets.Dataset`` (or a ``DatasetDict`` for a dict of sources)."""
    ds_mod = _datasets()
    if isinstance(source, (ds_mod.Dataset, ds_mod.DatasetDict)):
        return source
    if isinstance(source, Mapping):
        if _is_columns_dict(source):
            lengths = {k: len(v) for k, v in source.items()}
            if len(set(lengths.values())) > 1:
                raise StedgeError(f"{name or 'data'}: columns have different lengths {lengths}")
            return ds_mod.Dataset.from_dict({k: list(v) for k, v in source.items()})
        return ds_mod.DatasetDict({str(k): load_dataset(v, split=split, name=str(k)) for k, v in source.items()})
    if isinstance(source, Sequence) and not isinstance(source, (str, bytes)):
        rows = list(source)
        if rows and not all(isinstance(r, Mapping) for r in rows):
            raise StedgeError(f"{name or 'data'}: a list source must hold row dicts (column -> value)")
        return ds_mod.Dataset.from_list(rows) if rows else ds_mod.Dataset.from_dict({})
    if isinstance(source, (str, os.PathLike)):
        from ..data import read_rows, resolve_data_path

        p = resolve_data_path(source)
        if p.is_dir():
            if (p / "dataset_info.json").exists() or (p / "dataset_dict.json").exists() or (p / "state.json").exists():
                loaded = ds_mod.load_from_disk(str(p))
                if isinstance(loaded, ds_mod.DatasetDict) and split:
                    return loaded[split]
                return loaded
            raise StedgeError(f"{p} is a folder but not one written by datasets' save_to_disk; pass a data file")
        rows = read_rows(source, split=split)
        return ds_mod.Dataset.from_list(rows) if rows else ds_mod.Dataset.from_dict({})
    raise StedgeError(f"cannot load training data from a {type(source).__name__}")


def _as_number(value: Any) -> float | int | None:
    """A numeric label value, or None when it is not a finite number."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        s = value.strip()
        try:
            return int(s)
        except ValueError:
            pass
        try:
            f = float(s)
        except ValueError:
            return None
        return f if math.isfinite(f) else None
    try:  # numpy scalars
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _is_vector_label(value: Any) -> bool:
    return isinstance(value, (list, tuple)) or getattr(value, "ndim", 0) == 1


def _check_vector_labels(values: Sequence[Any], name: str, label: str) -> None:
    """Vector labels (one teacher embedding per row): all the same length, all finite numbers."""
    import numpy as np

    width = None
    for i, v in enumerate(values):
        try:
            arr = np.asarray(v, dtype=np.float64)
        except (TypeError, ValueError):
            raise StedgeError(f"{name}: row {i + 1}: {label} is not a vector of numbers") from None
        if arr.ndim != 1 or (width is not None and arr.shape[0] != width):
            raise StedgeError(
                f"{name}: row {i + 1}: {label} has shape {arr.shape}, expected a vector of length {width}"
            )
        if not np.isfinite(arr).all():
            raise StedgeError(f"{name}: row {i + 1}: {label} holds a non-finite number")
        width = arr.shape[0]


def loss_spec(loss: Any) -> tuple[int, int | None, bool]:
    """(min input columns, max input columns or None for no limit, needs a label) declared by a loss."""
    needs_label = bool(getattr(loss, "needs_label", False))
    for lo_name, hi_name in (
        ("min_inputs", "max_inputs"),
        ("min_columns", "max_columns"),
        ("min_input_columns", "max_input_columns"),
    ):
        if hasattr(loss, lo_name):
            return int(getattr(loss, lo_name)), getattr(loss, hi_name, None), needs_label
    for attr in ("num_inputs", "input_columns", "num_columns", "n_inputs"):
        n = getattr(loss, attr, None)
        if isinstance(n, int):
            return n, n, needs_label
        if isinstance(n, (tuple, list)) and len(n) == 2 and all(x is None or isinstance(x, int) for x in n):
            return int(n[0] or 1), n[1], needs_label
    return 1, None, needs_label


def _expected_text(lo: int, hi: int | None) -> str:
    if hi == lo:
        return f"{lo} input column{'s' if lo != 1 else ''}"
    if hi is None:
        return f"at least {lo} input column{'s' if lo != 1 else ''}"
    return f"{lo} to {hi} input columns"


def split_columns(column_names: Sequence[str]) -> tuple[list[str], str | None]:
    """(input columns in order, label column or None) under the format rules."""
    names = [c for c in column_names if c != DATASET_NAME_COLUMN]
    label = next((c for c in LABEL_COLUMNS if c in names), None)
    inputs = [c for c in names if c not in LABEL_COLUMNS]
    return inputs, label


def prepare_dataset(
    dataset: Any,
    loss: Any = None,
    name: str = "train data",
    columns: Sequence[str] | None = None,
    label_range: tuple[float, float] | Mapping[str, Any] | None = None,
):
    """Select ``columns`` (if given), check the data against the loss, and turn the label numeric; with
    ``label_range`` (lo, hi), the labels, which must lie in it, are rescaled onto 0..1.

    Errors name the columns found and the ones expected, the row of a bad label, or an empty dataset.
    A ``DatasetDict`` is checked dataset by dataset; ``loss`` may then be a dict keyed by dataset name.
    """
    ds_mod = _datasets()
    if isinstance(dataset, Mapping) and not isinstance(dataset, ds_mod.DatasetDict):
        dataset = load_dataset(dataset, name=name)
    if isinstance(dataset, ds_mod.DatasetDict):
        if not dataset:
            raise StedgeError(f"{name}: no datasets")
        out = {}
        for key, sub in dataset.items():
            if isinstance(loss, Mapping) and key not in loss:
                raise StedgeError(f"{name}: no loss for dataset '{key}' (losses given for: {', '.join(loss)})")
            sub_loss = loss[key] if isinstance(loss, Mapping) else loss
            sub_cols = columns[key] if isinstance(columns, Mapping) else columns
            sub_range = label_range.get(key) if isinstance(label_range, Mapping) else label_range
            out[key] = prepare_dataset(
                load_dataset(sub, name=f"{name} '{key}'"),
                sub_loss,
                name=f"{name} '{key}'",
                columns=sub_cols,
                label_range=sub_range,
            )
        return ds_mod.DatasetDict(out)
    if isinstance(loss, Mapping):
        raise StedgeError(f"{name}: a dict of losses needs a dict of datasets (one loss per dataset name)")
    ds = load_dataset(dataset, name=name)
    found = list(ds.column_names)
    if columns:
        missing = [c for c in columns if c not in found]
        if missing:
            raise StedgeError(
                f"{name}: no column {', '.join(repr(c) for c in missing)} (columns found: {', '.join(found) or 'none'})"
            )
        ds = ds.select_columns(list(columns))
    if len(ds) == 0:
        raise StedgeError(f"{name} is empty: it has no rows (columns: {', '.join(found) or 'none'})")
    inputs, label = split_columns(ds.column_names)
    if loss is not None:
        lo, hi, needs_label = loss_spec(loss)
        loss_name = type(loss).__name__
        if len(inputs) < lo or (hi is not None and len(inputs) > hi) or (needs_label and label is None):
            lab = f" and a label column ({' or '.join(LABEL_COLUMNS)})" if needs_label else ""
            raise StedgeError(
                f"{name}: {loss_name} expects {_expected_text(lo, hi)}{lab}; found {len(inputs)} input "
                f"column{'s' if len(inputs) != 1 else ''} ({', '.join(inputs) or 'none'})"
                + (f" and label column '{label}'" if label else " and no label column")
                + ". Choose the columns with --columns (or `columns:` in a config file) or rename them."
            )
    for col in inputs:
        for i, v in enumerate(ds[col]):
            if not isinstance(v, str):
                raise StedgeError(f"{name}: row {i + 1}, column '{col}': expected text, got {type(v).__name__} {v!r}")
    if label_range is not None and (label is None or _is_vector_label(ds[0][label])):
        what = "teacher embeddings" if label is not None else "no label column"
        raise StedgeError(
            f"{name}: a label range was given, but the data has {what} (a label range rescales numeric labels "
            f"'{' or '.join(LABEL_COLUMNS)}' onto 0-1); drop --label-range / label_range"
        )
    if label is not None and _is_vector_label(ds[0][label]):
        _check_vector_labels(ds[label], name, label)  # teacher embeddings (MSELoss): keep the column as it is
    elif label is not None:
        values = []
        for i, v in enumerate(ds[label]):
            x = _as_number(v)
            if x is None:
                raise StedgeError(f"{name}: row {i + 1}: {label} {v!r} is not a finite number (labels must be numeric)")
            values.append(x)
        if label_range is not None:
            values = rescale_labels(values, label_range, name, label)
        elif any(isinstance(x, float) for x in values):
            values = [float(x) for x in values]
        _check_label_bounds(values, loss, name, label)
        ds = ds.remove_columns(label).add_column(label, values)
    return ds


def _check_label_bounds(values: Sequence[float], loss: Any, name: str, label: str) -> None:
    """Labels outside what the loss can learn from (its ``label_bounds``: 0-1 for bce, -1-1 for the cosine loss)
    would train on targets it can never reach: an error that says how to rescale them."""
    bounds = getattr(loss, "label_bounds", None)
    if bounds is None or not values:
        return
    lo, hi = min(values), max(values)
    if lo < bounds[0] or hi > bounds[1]:
        raise StedgeError(
            f"{name}: column '{label}' holds {lo:g} to {hi:g}; {type(loss).__name__} needs labels from {bounds[0]:g} "
            f"to {bounds[1]:g}: give the range they run over, --label-range LO:HI (STS-B scores: 0:5; label_range = "
            "[LO, HI] in a config file), and they are rescaled onto 0-1"
        )


def rescale_labels(values: Sequence[float], label_range: tuple[float, float], name: str, label: str) -> list[float]:
    """Labels that run from ``lo`` to ``hi`` (``label_range``) mapped onto 0..1 as ``(x - lo) / (hi - lo)``; a label
    outside the range is an error naming its row, since a wrong range would train on wrong targets silently."""
    lo, hi = label_range
    for i, x in enumerate(values):
        if not lo <= x <= hi:
            raise StedgeError(
                f"{name}: row {i + 1}: {label} {x:g} lies outside the label range {lo:g} to {hi:g}; give the range "
                f"the labels run over (--label-range LO:HI, or label_range = [LO, HI] in a config file)"
            )
    return [(float(x) - lo) / (hi - lo) for x in values]


def dataset_columns(dataset: Any) -> dict[str, list[str]]:
    """Input columns per dataset name (key '' for a single dataset)."""
    ds_mod = _datasets()
    if isinstance(dataset, ds_mod.DatasetDict):
        return {k: split_columns(v.column_names)[0] for k, v in dataset.items()}
    return {"": split_columns(dataset.column_names)[0]}


def describe(dataset: Any) -> str:
    """One line per dataset: rows and columns (for logs and the model card)."""
    ds_mod = _datasets()
    if isinstance(dataset, ds_mod.DatasetDict):
        return "; ".join(f"{k}: {len(v)} rows ({', '.join(v.column_names)})" for k, v in dataset.items())
    return f"{len(dataset)} rows ({', '.join(dataset.column_names)})"


def source_name(source: Any) -> str:
    """A short human name for a data source (file name, Hub name, or 'in-memory')."""
    if isinstance(source, (str, os.PathLike)):
        return str(source) if not Path(source).exists() else Path(source).name
    return "in-memory"
