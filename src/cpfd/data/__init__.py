"""The dataset contract (format v1): read ``dataset.yaml`` + table, validate before any compute, prepare tensors."""

from cpfd.data.contract import DatasetError, DatasetSpec, Problem, TaskSpec, load_spec
from cpfd.data.prepared import PreparedData, encode_share, load_dataset

__all__ = ["DatasetError", "DatasetSpec", "Problem", "TaskSpec", "load_spec", "PreparedData", "encode_share", "load_dataset"]
