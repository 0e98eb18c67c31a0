"""Data providers, looked up by name. Importing this package registers every provider module in it.

One file per provider (``etl/providers/<name>.py``), each registering its class with
:func:`register`; ``base.py`` holds the contract, ``registry.py`` the registry and ``wire.py`` the
wire-format helpers several providers share (:data:`SUPPORT_MODULES`: not providers).
"""

import importlib
import pkgutil

from etl.providers.base import FetchResult, Page, Provider, ProviderConfig, Request
from etl.providers.registry import get_provider_class, provider_names, register

#: Modules of this package that are not providers.
SUPPORT_MODULES = frozenset({"base", "registry", "wire"})

for _module in pkgutil.iter_modules(__path__):
    if _module.name not in SUPPORT_MODULES:
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "SUPPORT_MODULES",
    "Provider",
    "ProviderConfig",
    "Request",
    "Page",
    "FetchResult",
    "register",
    "get_provider_class",
    "provider_names",
]
