"""Providers are looked up by name in one registry; it accepts only :class:`Provider` subclasses."""

from __future__ import annotations

from errors import ConfigError
from etl.providers.base import Provider

__all__ = ["register", "get_provider_class", "provider_names"]

_REGISTRY: dict[str, type[Provider]] = {}


def register(cls: type[Provider]) -> type[Provider]:
    """Class decorator: register ``cls`` under ``cls.name``. Rejects non-providers and duplicate names."""
    if not (isinstance(cls, type) and issubclass(cls, Provider)):
        raise TypeError(f"{cls!r} is not a Provider subclass")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__name__} has no provider name")
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ValueError(f"provider name {name!r} is already registered by {_REGISTRY[name].__name__}")
    _REGISTRY[name] = cls
    return cls


def get_provider_class(name: str) -> type[Provider]:
    """The provider registered as ``name``; raises ConfigError naming the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"unknown provider {name!r} (known: {', '.join(provider_names())})", name="provider", value=name
        ) from None


def provider_names() -> list[str]:
    return sorted(_REGISTRY)
