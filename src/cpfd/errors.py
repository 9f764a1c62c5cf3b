"""The one error base of the package: every failure a user can fix is a :class:`CpfdError`.

The CLI catches this base once (``cpfd.cli``) and prints ``error: <message>`` with exit code 2; anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations


class CpfdError(Exception):
    """A failure caused by the input (data, config, files, a request), with a message that says what to fix."""


class ConfigError(CpfdError, ValueError):
    """A run configuration that does not validate, or names something that is not registered."""


class UnknownNameError(CpfdError, KeyError):
    """A name looked up in a registry that holds no such entry; the message lists the registered names."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


class UsageError(CpfdError, ValueError):
    """Arguments that do not fit together (a student folder equal to its teacher's, a teacher for another schema)."""
