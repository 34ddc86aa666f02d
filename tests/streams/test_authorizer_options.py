"""The authorizer's settings from the environment."""

from __future__ import annotations

import pytest

from shardbus.errors import ConfigError
from streams.authorizer import AuthorizerOptions


@pytest.mark.parametrize("value", ["abc", "0", "-1", "nan", "inf", "86401"])
def test_bad_fetch_window_rejected(value):
    with pytest.raises(ConfigError, match=f"SHARDBUS_FETCH_WINDOW_S={value!r} is invalid"):
        AuthorizerOptions.from_env({"SHARDBUS_FETCH_WINDOW_S": value})


def test_fetch_window_read():
    assert AuthorizerOptions.from_env({"SHARDBUS_FETCH_WINDOW_S": "2.5"}).window_s == 2.5
