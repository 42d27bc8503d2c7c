"""Text column codes (pipeline/text_codes.py): the compiled hash-table factorization must
give exactly the codes of the dict pass it replaces (first appearance order), and the
sorted variant np.unique's inverse; a hash collision must fall back to the exact pass."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.text_codes import factorize_text, factorize_text_sorted


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
