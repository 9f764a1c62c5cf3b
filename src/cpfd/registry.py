"""Name -> object registries for the things users extend (confidence functions, losses, encoders, task types).

Adding one is a single decorated function or class; YAML and the CLI find it by name, the timm/torchdistill way::

    from cpfd.registry import CONFIDENCES

    @CONFIDENCES.register("my_confidence")
    def my_confidence(probs, labels, label_mask, task_type): ...

A registry imports the module holding its built-in entries the first time it is asked for a name, so the config
(the floor of the package) can validate names without importing the layers above it. User modules are imported
by :func:`load_plugins` from the run config's ``plugins:`` list or the ``cpfd.plugins`` entry-point group.
"""

from __future__ import annotations

import fnmatch
import importlib
from collections.abc import Callable, Iterable
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from cpfd.errors import ConfigError, UnknownNameError

T = TypeVar("T")
ENTRY_POINT_GROUP = "cpfd.plugins"


class Registry(Generic[T]):
    def __init__(self, kind: str, builtins: str | None = None):
        self.kind = kind
        self._builtins = builtins
        self._items: dict[str, T] = {}

    def _load_builtins(self) -> None:
        if self._builtins is not None:
            module, self._builtins = self._builtins, None
            importlib.import_module(module)

    def register(self, name: str | None = None) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            key = name or getattr(obj, "__name__")
            if key in self._items and self._items[key] is not obj:
                raise KeyError(f"{self.kind} {key!r} is already registered")
            self._items[key] = obj
            return obj

        return decorator

    def unregister(self, name: str) -> None:
        self._items.pop(name, None)

    def get(self, name: str) -> T:
        self._load_builtins()
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(f"unknown {self.kind} {name!r}; registered: {', '.join(self.names())}") from None

    def check(self, name: str) -> str:
        """``name`` if registered, else a ``ValueError`` listing the registered names (for pydantic validators)."""
        self._load_builtins()
        if name not in self._items:
            raise ValueError(f"unknown {self.kind} {name!r}; registered: {', '.join(self.names())}")
        return name

    def names(self, pattern: str = "*") -> list[str]:
        self._load_builtins()
        return sorted(n for n in self._items if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: str) -> bool:
        self._load_builtins()
        return name in self._items


CONFIDENCES: Registry = Registry("confidence function", "cpfd.distill.confidence")
LOSSES: Registry = Registry("loss", "cpfd.distill.losses")
ENCODERS: Registry = Registry("encoder", "cpfd.encoders")
TASK_TYPES: Registry = Registry("task type", "cpfd.task_types")

_loaded_plugins: set[str] = set()


def load_plugins(modules: Iterable[str] = ()) -> None:
    """Import user modules that register entries: the ``cpfd.plugins`` entry points, then ``modules``."""
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.value not in _loaded_plugins:
            ep.load()
            _loaded_plugins.add(ep.value)
    for module in modules:
        if module in _loaded_plugins:
            continue
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise ConfigError(f"plugin module {module!r} cannot be imported: {err} (is it on PYTHONPATH?)") from None
        _loaded_plugins.add(module)
