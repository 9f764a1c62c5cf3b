"""Per-column statistics of train rows, computed in streaming passes over row blocks.

Standardisers fit on train rows of a memory-mapped store; gathering every train row (or a float64 copy of them)
would make memory grow with the table, so each pass reads ``BLOCK_ROWS`` rows at a time.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

BLOCK_ROWS = 8_192  # float64 temporaries of a block stay a few MB


def _blocks(values: Tensor, rows: Tensor | None, release: Callable[[], None] | None):
    n = len(values) if rows is None else len(rows)
    for start in range(0, n, BLOCK_ROWS):
        block = values[start : start + BLOCK_ROWS] if rows is None else values[rows[start : start + BLOCK_ROWS]]
        yield block.double()
        if release is not None:
            release()


def column_moments(values: Tensor, rows: Tensor | None = None, transform: Callable[[Tensor], Tensor] | None = None,
                   release: Callable[[], None] | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Per-column mean, standard deviation (population) and skewness of ``transform(values[rows])``, ignoring NaN.

    Two passes (mean, then centred powers) in float64 per block; returns float32 tensors. ``release`` runs after
    each block (hand the memory-mapped pages read so far back to the kernel)."""
    transform = transform or (lambda x: x)
    width = values.shape[1]
    count = torch.zeros(width, dtype=torch.float64)
    total = torch.zeros(width, dtype=torch.float64)
    for block in _blocks(values, rows, release):
        block = transform(block)
        finite = ~torch.isnan(block)
        count += finite.sum(0)
        total += torch.where(finite, block, 0.0).sum(0)
    count = count.clamp(min=1)
    mean = total / count
    m2 = torch.zeros(width, dtype=torch.float64)
    m3 = torch.zeros(width, dtype=torch.float64)
    for block in _blocks(values, rows, release):
        centred = torch.where(torch.isnan(block), 0.0, transform(block) - mean)
        centred = torch.where(torch.isnan(centred), 0.0, centred)
        m2 += (centred**2).sum(0)
        m3 += (centred**3).sum(0)
    std = (m2 / count).sqrt()
    skew = m3 / count / std.clamp(min=1e-8) ** 3
    return mean.float(), std.float(), skew.float()
