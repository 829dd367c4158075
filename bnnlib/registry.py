"""Registries: the names a run chooses from (models, estimators, optimizers, batch norms).

A :class:`Registry` maps each name to what it builds, and is the one list of those names: the
training CLI offers them as choices, :class:`bnnlib.train.config.RunConfig` checks a stored
name against them, and the book and the tests iterate them. A new model, estimator, optimizer
or batch norm is one entry in its registry, beside its code.
"""

from __future__ import annotations

from typing import Generic, TypeVar

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(dict[str, T], Generic[T]):
    """``{name: entry}`` of one ``kind`` of thing; shown (``repr``) as the tuple of its names."""

    def __init__(self, kind: str, entries: dict[str, T]) -> None:
        super().__init__(entries)
        self.kind = kind

    def __repr__(self) -> str:
        return repr(tuple(self))

    def names(self) -> str:
        """The names, comma separated (for messages)."""
        return ", ".join(self)

    def pick(self, name: str) -> T:
        """The entry of ``name``, else ``ValueError`` naming the choices."""
        if name not in self:
            raise ValueError(f"unknown {self.kind} {name!r}; choose one of {self.names()}")
        return self[name]
