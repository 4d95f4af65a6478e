"""Failure messages about large states stay short (conftest's excerpt,
assert_state and the assertion hook): one failing test once printed an
8 MiB state."""

from __future__ import annotations

import pytest

import missionstream as ms
from conftest import assert_state, excerpt, pytest_assertrepr_compare

BIG = '"' + "y" * (8 * 1024 * 1024 - 2) + '"'


def test_an_excerpt_of_an_8_mib_state_is_short_and_says_its_length() -> None:
    text = excerpt(BIG)
    assert len(text) < 200 and f"({len(BIG)} bytes)" in text, text
    assert excerpt('{"v":1}') == repr('{"v":1}')
    listed = excerpt([BIG] * 1000)
    assert len(listed) < 4096 and "(1000 items)" in listed, listed[:200]
    event = ms.Event(ms.EventKind.STATE, "s", BIG, 1, ms.Status.OK)
    assert len(excerpt(event)) < 400, excerpt(event)[:400]


def test_assert_state_and_the_comparison_hook_print_excerpts() -> None:
    with pytest.raises(AssertionError) as failed:
        assert_state(BIG, BIG + " ", "8 MiB")
    message = str(failed.value)
    assert len(message) < 1000 and f"({len(BIG)} bytes)" in message, message[:1000]
    lines = pytest_assertrepr_compare(None, "==", BIG, BIG[:-1])
    assert lines is not None and sum(len(line) for line in lines) < 1000, lines
    assert pytest_assertrepr_compare(None, "==", "a", "b") is None  # pytest's own for short ones
