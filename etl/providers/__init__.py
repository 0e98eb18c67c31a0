"""Data providers, looked up by name. Importing this package registers the built-in ones."""

from etl.providers import alphavantage as _alphavantage  # noqa: F401 - registers "alphavantage"
from etl.providers import demo as _demo  # noqa: F401 - registers "demo"
from etl.providers.base import FetchResult, Provider
from etl.providers.registry import get_provider_class, provider_names, register

__all__ = ["Provider", "FetchResult", "register", "get_provider_class", "provider_names"]
