"""Property tests (hypothesis) for the 0-based index-list parser behind --drop-layers, --protect, sweep --k."""
from __future__ import annotations

import argparse

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis.cli.argtypes import int_list
from analysis.indices import MAX_INDICES, IndexListError, parse_indices

small_sets = st.lists(st.integers(0, 2000), min_size=1, max_size=60, unique=True)


def as_ranges(values: list[int]) -> str:
    vals, parts, i = sorted(values), [], 0
    while i < len(vals):
        j = i
        while j + 1 < len(vals) and vals[j + 1] == vals[j] + 1:
            j += 1
        parts.append(str(vals[i]) if i == j else f"{vals[i]}-{vals[j]}")
        i = j + 1
    return ",".join(parts)


@given(small_sets)
def test_plain_lists_round_trip_in_order(values):
    assert parse_indices(",".join(map(str, values))) == values
    assert parse_indices(" , ".join(map(str, values))) == values          # spaces around items are fine


@given(small_sets)
def test_range_form_gives_the_same_set(values):
    assert parse_indices(as_ranges(values)) == sorted(values)


@given(st.integers(0, 10_000), st.integers(1, 10_000))
def test_backwards_ranges_are_refused(b, gap):
    with pytest.raises(IndexListError, match="backwards range"):
        parse_indices(f"{b + gap}-{b}")


@given(small_sets, st.data())
def test_duplicates_are_refused(values, data):
    dup = data.draw(st.sampled_from(values))
    pos = data.draw(st.integers(0, len(values)))
    items = [str(v) for v in values]
    items.insert(pos, str(dup))
    with pytest.raises(IndexListError, match=f"index {dup} appears twice"):
        parse_indices(",".join(items))


@given(small_sets, st.data())
def test_empty_items_are_refused(values, data):
    items = [str(v) for v in values]
    items.insert(data.draw(st.integers(0, len(items))), data.draw(st.sampled_from(["", " ", "  "])))
    with pytest.raises(IndexListError, match="empty item"):
        parse_indices(",".join(items))


@given(st.integers(0, 10**6), st.integers(MAX_INDICES, 10**15))
@settings(max_examples=50)
def test_huge_ranges_are_refused_without_allocating(a, span):
    with pytest.raises(IndexListError, match="more than"):
        parse_indices(f"{a}-{a + span}")


@given(st.text(alphabet="0123456789-, x.+e\t", max_size=30) | st.text(max_size=30))
def test_any_text_gives_unique_nonnegative_ints_or_a_clear_error(text):
    try:
        out = parse_indices(text)
    except IndexListError as exc:
        assert str(exc)                                                       # a message, never empty
        with pytest.raises(argparse.ArgumentTypeError, match="0-based indices"):
            int_list(text)
        return
    assert all(isinstance(i, int) and i >= 0 for i in out)
    assert len(out) == len(set(out)) <= MAX_INDICES
    assert int_list(text) == out


def test_examples():
    assert parse_indices("3-5,9") == [3, 4, 5, 9]
    assert parse_indices("none") == [] and parse_indices(" None ") == []
    for bad, msg in [("", "empty index list"), ("1,", "empty item"), ("-1", "non-negative"), ("1.5", "bad item"),
                     ("5-3", "write 3-5"), ("2-4,3", "appears twice"), ("0-99999999999", "more than")]:
        with pytest.raises(IndexListError, match=msg):
            parse_indices(bad)
