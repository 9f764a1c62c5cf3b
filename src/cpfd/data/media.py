"""Checks that each row's video file or frames folder is there, under the contract's bad-media policy.

``fail`` stops with every bad row listed; ``skip`` drops those rows and returns them so the run report lists
them. Nothing is dropped silently.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cpfd.data.table import SOURCE_FILE, SOURCE_ROW
from cpfd.data.video import IMAGE_SUFFIXES


def media_problem(root: Path, value, kind: str) -> str | None:
    """Why a row's media is unusable, or None (a cheap check; decoding comes at extraction)."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or str(value).strip() == "":
        return f"no {kind} path given"
    path = root / str(value)
    if kind == "video":
        if not path.is_file():
            return f"video file not found: {path}"
        if path.stat().st_size == 0:
            return f"video file is empty (0 bytes): {path}"
        return None
    if not path.is_dir():
        return f"frames folder not found: {path}"
    if not any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir()):
        return f"frames folder has no images ({', '.join(sorted(IMAGE_SUFFIXES))}): {path}"
    return None


def find_bad_media(df: pd.DataFrame, root: Path, column: str, kind: str) -> pd.DataFrame:
    """Rows whose media is unusable: file, row, column, reason."""
    records = []
    for i, value in enumerate(df[column].tolist()):
        reason = media_problem(root, value, kind)
        if reason:
            records.append({"index": i, "file": df[SOURCE_FILE].iat[i], "row": int(df[SOURCE_ROW].iat[i]),
                            "column": column, "reason": reason})
    return pd.DataFrame(records, columns=["index", "file", "row", "column", "reason"])
