"""Name -> class registries (providers, polling strategies): one kind each, wrong kinds refused."""

from __future__ import annotations

from typing import Generic, TypeVar

from errors import ConfigError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Classes of one ``kind``, looked up by their ``name`` attribute.

    ``register`` (usable as a class decorator) rejects anything that is not a subclass of
    ``kind``, a class without a name, and a second class under a taken name; ``get`` raises
    :class:`~errors.ConfigError` naming the known entries.
    """

    def __init__(self, kind: type[T], what: str) -> None:
        self.kind = kind
        self.what = what
        self._entries: dict[str, type[T]] = {}

    def register(self, cls: type[T]) -> type[T]:
        if not (isinstance(cls, type) and issubclass(cls, self.kind)):
            raise TypeError(f"{cls!r} is not a {self.kind.__name__} subclass")
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name:
            raise TypeError(f"{cls.__name__} has no {self.what} name")
        if self._entries.get(name, cls) is not cls:
            raise ValueError(f"{self.what} name {name!r} is already registered by {self._entries[name].__name__}")
        self._entries[name] = cls
        return cls

    def get(self, name: str) -> type[T]:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(self.names())
            raise ConfigError(f"unknown {self.what} {name!r} (known: {known})", name=self.what, value=name) from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries
