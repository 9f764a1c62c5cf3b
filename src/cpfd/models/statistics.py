"""Per-column statistics of train rows, computed in streaming passes over row blocks.

Standardisers fit on train rows of a memory-mapped store; gathering every train row (or a float64 copy of them)
would make memory grow with the table, so each pass reads ``BLOCK_ROWS`` rows at a time.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

BLOCK_ROWS = 8_192  # float64 temporaries of a block stay a few MB


Read = Callable[[Tensor, Tensor], Tensor]  # (values, rows) -> values[rows], e.g. PreparedData.rows_of


def _blocks(values: Tensor, rows: Tensor | None, read: Read | None):
    read = read or (lambda v, idx: v[idx])
    n = len(values) if rows is None else len(rows)
    for start in range(0, n, BLOCK_ROWS):
        stop = min(start + BLOCK_ROWS, n)
        yield read(values, torch.arange(start, stop) if rows is None else rows[start:stop]).double()


def column_moments(values: Tensor, rows: Tensor | None = None, transform: Callable[[Tensor], Tensor] | None = None,
                   read: Read | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Per-column mean, standard deviation (population) and skewness of ``transform(values[rows])``, ignoring NaN.

    Two passes (mean, then centred powers) in float64 per block; returns float32 tensors. ``read`` fetches a block
    of rows (the dataset store's reads, which leave its pages out of the process; default: indexing)."""
    transform = transform or (lambda x: x)
    width = values.shape[1]
    count = torch.zeros(width, dtype=torch.float64)
    total = torch.zeros(width, dtype=torch.float64)
    for block in _blocks(values, rows, read):
        block = transform(block)
        finite = ~torch.isnan(block)
        count += finite.sum(0)
        total += torch.where(finite, block, 0.0).sum(0)
    count = count.clamp(min=1)
    mean = total / count
    m2 = torch.zeros(width, dtype=torch.float64)
    m3 = torch.zeros(width, dtype=torch.float64)
    for block in _blocks(values, rows, read):
        centred = torch.where(torch.isnan(block), 0.0, transform(block) - mean)
        centred = torch.where(torch.isnan(centred), 0.0, centred)
        m2 += (centred**2).sum(0)
        m3 += (centred**3).sum(0)
    std = (m2 / count).sqrt()
    skew = m3 / count / std.clamp(min=1e-8) ** 3
    return mean.float(), std.float(), skew.float()
