"""What a context-aware confidence function may read besides the teacher's probabilities.

Most confidence functions look at one row's teacher output. The scenario-aware ones need the business scenario
of every row, the validation split, a no-privileged reference model, or (for the oracle control only) hidden
labels. A confidence function that declares a ``context`` parameter receives a :class:`TaskContext` for its task,
covering every row of the dataset; one that does not, never sees it.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np
from torch import Tensor


@dataclass(frozen=True)
class TaskContext:
    split: np.ndarray  # "train" / "val" / "test" per row (PreparedData.split: a pd.Categorical that compares alike)
    groups: np.ndarray | None = None  # business scenario per row, when the dataset declares ``group``
    reference_probs: Tensor | None = None  # calibrated probabilities of a no-privileged model, every row
    oracle_labels: Tensor | None = None  # hidden labels (benchmarks only), with ``oracle_mask``
    oracle_mask: Tensor | None = None
    fold_probs: Tensor | None = None  # (K, rows, ...) calibrated probabilities of K cross-fitted fold teachers
    min_group_rows: int = 30  # fewer labelled validation rows than this: a scenario uses the global estimate
    shortfall_se: float = 2.0  # a scenario's reliability drops only below 0 gain by more than this many s.e.
    shortfall_power: float = 1.0  # the reliability is the likelihood ratio's upper bound to this power
    scenario_calibrated: bool = False  # compare teacher and reference after a temperature per scenario each


def takes_context(fn) -> bool:
    """Whether a registered confidence function wants a :class:`TaskContext` (declares ``context``)."""
    try:
        return "context" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def needs(fn) -> frozenset[str]:
    """What a confidence function requires of its context: a subset of {"reference", "oracle", "folds"}."""
    return frozenset(getattr(fn, "needs", ()))
