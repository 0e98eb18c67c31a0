"""Providers are looked up by name in one registry; it accepts only :class:`Provider` subclasses."""

from __future__ import annotations

from etl.providers.base import Provider
from registry import Registry

__all__ = ["PROVIDERS", "register", "get_provider_class", "provider_names"]

PROVIDERS: Registry[Provider] = Registry(Provider, "provider")
register = PROVIDERS.register
get_provider_class = PROVIDERS.get
provider_names = PROVIDERS.names
