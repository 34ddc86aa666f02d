"""Every decoder of untrusted bytes rejects hostile input with its own errors only.

The targets and their strategies are in decoder_targets.py. This test gives
each a small budget; `benchmarks/fuzz.py` runs the same targets for longer.
"""

from __future__ import annotations

import pytest
from decoder_targets import TARGETS, DecoderTarget
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# Drawing a valid message to mutate is slow for the larger types, and some
# draws are large, so hypothesis's health checks for both are off here.
_SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


def test_target_names_are_unique():
    assert len({target.name for target in TARGETS}) == len(TARGETS)


@pytest.mark.parametrize("target", TARGETS, ids=lambda target: target.name)
@settings(_SETTINGS, max_examples=25)
@given(data=st.data())
def test_valid_input_decodes(target: DecoderTarget, data):
    # A strategy that drew only garbage would make the property test pass
    # without ever reaching the decoder's checks of a field.
    encoded = data.draw(target.valid, label="valid")
    result = target.decode(encoded)
    target.accepted(encoded, result)


@pytest.mark.parametrize("target", TARGETS, ids=lambda target: target.name)
@_SETTINGS
@given(data=st.data())
def test_hostile_input_rejected_cleanly(target: DecoderTarget, data):
    target.check(data.draw(target.hostile, label="hostile"))
