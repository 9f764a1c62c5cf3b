"""Name -> object registries for the things users extend (confidence functions, losses, encoders).

Adding one is a single decorated function or class; YAML and the CLI find it by name, the timm/torchdistill way::

    from cpfd.distill.confidence import CONFIDENCES

    @CONFIDENCES.register("my_confidence")
    def my_confidence(probs, labels, label_mask, task_type): ...
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            key = name or getattr(obj, "__name__")
            if key in self._items and self._items[key] is not obj:
                raise KeyError(f"{self.kind} {key!r} is already registered")
            self._items[key] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise KeyError(f"unknown {self.kind} {name!r}; registered: {', '.join(sorted(self._items))}") from None

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._items if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: str) -> bool:
        return name in self._items
