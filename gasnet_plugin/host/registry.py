"""Named registries of swappable parts (stages, redshift engines, readers).

Modelled on tox's ``ToxEnvRegister``: plugins receive a registry in a registration hook and
``add`` what they provide under its ``name``; the host looks parts up by the name a config
gives, and a name nobody registered is refused with the list of names that exist.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar


class Named(Protocol):
    """Anything registrable: it carries the ``name`` a config refers to it by."""

    name: str


T = TypeVar("T", bound=Named)


class UnknownNameError(LookupError):
    """A config or call asked for a name that no plugin registered."""


class Registry(Generic[T]):
    """A name → part mapping filled by plugins.

    Parameters
    ----------
    kind
        What the registry holds, in words ("stage", "redshift engine", "reader"); used in
        error messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._parts: dict[str, T] = {}

    def add(self, part: T) -> None:
        """Register ``part`` under ``part.name``; registering a name twice is an error."""
        name = part.name
        if name in self._parts and self._parts[name] is not part:
            raise ValueError(f"{self.kind} {name!r} is registered twice "
                             f"({self._parts[name]!r} and {part!r})")
        self._parts[name] = part

    def get(self, name: str) -> T:
        """The part registered as ``name``; an unknown name raises :class:`UnknownNameError`."""
        try:
            return self._parts[name]
        except KeyError:
            known = ", ".join(self.names()) or "none"
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; registered {self.kind}s: {known}") from None

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        return list(self._parts)

    def __contains__(self, name: object) -> bool:
        return name in self._parts

    def __iter__(self) -> Iterator[T]:
        return iter(self._parts.values())

    def __len__(self) -> int:
        return len(self._parts)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
