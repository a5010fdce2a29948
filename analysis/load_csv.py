"""Read a ``batch_size,steps`` table measured anywhere (``critbatch fit``)."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd


def load_steps_csv(path: str | os.PathLike) -> pd.DataFrame:
    """A ``batch_size,steps`` table measured anywhere (optional ``seed`` column)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no steps CSV at {path}")
    try:  # str: errors quote the raw text
        df = pd.read_csv(path, dtype=str, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise ValueError(
            f"{path}: the file is empty; a steps CSV has a header batch_size,steps"
        ) from None
    except (UnicodeDecodeError, pd.errors.ParserError) as e:
        why = "not text (binary data)" if isinstance(e, UnicodeDecodeError) else "not a CSV table"
        raise ValueError(
            f"{path}: {why}; a steps CSV is text with a header batch_size,steps"
        ) from None
    except OSError as e:
        raise ValueError(f"{path}: cannot be read ({e.strerror})") from None
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in ("batch_size", "steps") if c not in df.columns]
    if missing:
        raise ValueError(
            f"{path}: missing column(s) {missing}; found {list(df.columns)}. A steps CSV has a "
            "header `batch_size,steps` (and optionally `seed`), one row per measurement."
        )
    if df.empty:
        raise ValueError(f"{path}: no rows under the header")
    cols = ["batch_size", "steps"] + (["seed"] if "seed" in df.columns else [])
    for col in cols:
        values = pd.to_numeric(df[col], errors="coerce")
        low = 0 if col == "seed" else 1
        bad = df.index[values.isna() | (values < low) | (values != values.round())]
        if len(bad):
            row = int(bad[0])
            kind = "a non-negative integer" if col == "seed" else "a positive integer"
            raise ValueError(
                f"{path}: row {row + 2}: {col}={df[col].iloc[row]} is not {kind}"
            )  # row + 2: 1-based, after the header line
        df[col] = values.astype(int)
    return df[cols].reset_index(drop=True)
