from __future__ import annotations

import pkgutil

import pytest

import etl.providers
from errors import ConfigError
from etl.providers import Provider, get_provider_class, provider_names
from etl.providers.registry import PROVIDERS
from scheduler.strategies import STRATEGIES, ContinuousStrategy, strategy_class


def test_builtin_entries():
    # every module of etl/providers registers itself (tests may add their own, e.g. fakex, from tests/)
    modules = {m.name for m in pkgutil.iter_modules(etl.providers.__path__)} - etl.providers.SUPPORT_MODULES
    builtin = [n for n in provider_names() if get_provider_class(n).__module__.startswith("etl.providers.")]
    assert {get_provider_class(n).__module__.rsplit(".", 1)[-1] for n in builtin} == modules
    assert {"alphavantage", "demo"} <= set(provider_names()) and provider_names() == sorted(provider_names())
    assert STRATEGIES.names() == ["adaptive", "continuous", "market_hours"]
    assert strategy_class("continuous") is ContinuousStrategy


def test_unknown_names_are_config_errors_naming_the_known_ones():
    with pytest.raises(ConfigError, match="known: alphavantage, .*demo"):
        get_provider_class("polygonx")
    with pytest.raises(ConfigError, match="unknown polling strategy"):
        strategy_class("sometimes")


def test_wrong_kinds_and_taken_names_are_refused():
    with pytest.raises(TypeError):
        PROVIDERS.register(ContinuousStrategy)  # a strategy is not a provider
    with pytest.raises(TypeError):
        STRATEGIES.register(object)

    class Nameless(Provider):
        pass

    with pytest.raises(TypeError, match="no provider name"):
        PROVIDERS.register(Nameless)

    class Impostor(Provider):
        name = "demo"

    with pytest.raises(ValueError, match="already registered"):
        PROVIDERS.register(Impostor)
