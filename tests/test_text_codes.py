"""Text column codes (pipeline/text_codes.py): the compiled hash-table factorization must
give exactly the codes of the dict pass it replaces (first appearance order), and the
sorted variant np.unique's inverse; a hash collision must fall back to the exact pass."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.text_codes import TextIds, factorize_text, factorize_text_sorted


def dict_codes(values: list) -> tuple[list[int], list]:
    index: dict = {}
    return [index.setdefault(v, len(index)) for v in values], list(index)


def object_column(values: list) -> np.ndarray:
    out = np.empty(len(values), object)
    out[:] = values
    return out


NAMES = st.lists(st.sampled_from(["a.example.com", "b.example.com", "", "x", "Ü.de",
                                  "a.example.com.", "\x00", "a\x00"]) | st.text(max_size=12),
                 max_size=200)


@settings(max_examples=100, deadline=None)
@given(NAMES)
def test_codes_equal_the_dict_pass(values: list[str]) -> None:
    codes, distinct = factorize_text(object_column(values))
    want_codes, want_distinct = dict_codes(values)
    assert codes.tolist() == want_codes and distinct == want_distinct
    assert codes.dtype == np.int64


@settings(max_examples=100, deadline=None)
@given(NAMES)
def test_sorted_codes_equal_sorting_the_distinct_values(values: list[str]) -> None:
    codes, distinct = factorize_text_sorted(values)
    assert distinct == sorted(set(values))
    assert [distinct[c] for c in codes.tolist()] == values


class Colliding:
    """Distinct values that all share one hash: the fast path must notice."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __hash__(self) -> int:
        return 7

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Colliding) and other.text == self.text


def test_hash_collisions_fall_back_to_exact_codes() -> None:
    values = [Colliding(t) for t in ("a", "b", "a", "c", "b")]
    codes, distinct = factorize_text(object_column(values))
    assert codes.tolist() == [0, 1, 0, 2, 1]
    assert [d.text for d in distinct] == ["a", "b", "c"]


def test_empty_column() -> None:
    codes, distinct = factorize_text(np.empty(0, object))
    assert codes.size == 0 and distinct == []


# --- TextIds: the memo detectors keep across windows -----------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.lists(NAMES, min_size=1, max_size=5), st.integers(1, 40))
def test_text_ids_are_stable_across_calls_and_restart_at_the_limit(calls: list[list[str]],
                                                                   limit: int) -> None:
    memo = TextIds(limit)
    seen: dict = {}  # the memo's content as a dict pass would build it
    for values in calls:
        ids, items, new, reset = memo.ids(object_column(values))
        assert items == values
        distinct_new = [v for v in dict.fromkeys(values) if v not in seen]
        # (one call's values always get ids, even beyond the limit)
        assert reset == (bool(distinct_new) and len(seen) + len(distinct_new) > limit)
        if reset:
            seen = {}
            distinct_new = list(dict.fromkeys(values))
        assert new == distinct_new
        for v in distinct_new:
            seen[v] = len(seen)
        assert ids.tolist() == [seen[v] for v in values]
        codes, distinct = memo.sorted_codes(values)
        want_codes, want_distinct = factorize_text_sorted(values)
        assert codes.tolist() == want_codes.tolist() and distinct == want_distinct
