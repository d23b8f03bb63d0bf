"""One home per extension point: a named registry that the code, the CLI, the nodes and the docs read.

A registry maps a name to an entry (a class, a function or a small spec object) and keeps a one-line
help text per name, so command-line choices, node combos, tooltips and documentation are built from
the same table instead of repeated tuples. Adding an entry is one file plus one registration line::

    from fourd_core.kernels.grid_modes import GRID_MODES

    @GRID_MODES.register("my_mode", help="what it does, in one line")
    class MyMode(TwoStreamMode):
        ...

(the decorator pattern of diffusers' ``_AttentionBackendRegistry.register``,
huggingface/diffusers ``src/diffusers/models/attention_dispatch.py``).
"""

from __future__ import annotations

from typing import Any, Callable, Generic, Iterator, TypeVar

from .errors import InputError

T = TypeVar("T")


class Registry(Generic[T]):
    """An ordered ``name -> entry`` table with one help line per name.

    Args:
        kind: what the entries are, for error messages ("grid mode", "export format", ...).
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._help: dict[str, str] = {}

    def register(self, name: str, *, help: str) -> Callable[[T], T]:  # noqa: A002 - argparse's word
        """Decorator: register the decorated object under ``name``; returns it unchanged.

        Raises:
            ValueError: ``name`` is taken (two entries must not silently shadow each other).
        """

        def add(entry: T) -> T:
            self.add(name, entry, help=help)
            return entry

        return add

    def add(self, name: str, entry: T, *, help: str) -> None:  # noqa: A002
        """Register ``entry`` under ``name`` (see :meth:`register`)."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        self._help[name] = " ".join(help.split())

    def remove(self, name: str) -> None:
        """Take ``name`` out again (tests that register a dummy entry)."""
        self._entries.pop(name, None)
        self._help.pop(name, None)

    def names(self) -> tuple[str, ...]:
        """The registered names, in registration order."""
        return tuple(self._entries)

    def get(self, name: str) -> T:
        """The entry of ``name``.

        Raises:
            InputError: an unknown name (the message lists the known ones).
        """
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise InputError(f"Unknown {self.kind} {str(name)[:40]!r}: use one of {', '.join(self._entries)}.") from None

    def help(self, name: str) -> str:
        """The one-line help of ``name``."""
        return self._help[name]

    def describe(self, names: tuple[str, ...] | None = None, sep: str = "; ") -> str:
        """``"name: help; name: help"`` for a help text or tooltip (all names, or ``names``)."""
        return sep.join(f"{n}: {self._help[n]}" for n in (names or self.names()))

    def __contains__(self, name: Any) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def items(self):
        return self._entries.items()
