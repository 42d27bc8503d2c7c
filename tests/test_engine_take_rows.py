"""engine._UserColumns.take: reading a detector's columns at some of its rows (evidence of
a close) gives cols[name][rows], whether the held rows are one run of the shared buffer
(positions by an offset) or scattered (positions gathered), and the positions of one rows
object are found once for several columns."""

import numpy as np
import pytest

from correlation.engine import _UserColumns


class _Store:
    """The two things _UserColumns reads of a _SharedBuffer: numeric columns and object
    codes (none here)."""

    def __init__(self, columns: dict[str, np.ndarray]) -> None:
        self.columns = columns
        self.object_codes: dict = {}
        self.reads = 0

    def column(self, name: str) -> np.ndarray:
        self.reads += 1
        return self.columns[name]


def _store(size: int) -> _Store:
    rng = np.random.default_rng(7)
    return _Store({"a": rng.integers(0, 1 << 40, size), "b": rng.random(size)})


@pytest.mark.parametrize("positions", [np.arange(5, 95), np.arange(0, 100, 3),
                                       np.array([2, 3, 4, 50, 51, 99])])
def test_take_equals_whole_column_gather(positions: np.ndarray) -> None:
    store = _store(100)
    rng = np.random.default_rng(1)
    for rows in (rng.integers(0, positions.size, 40), np.arange(positions.size),
                 np.zeros(0, np.int64), rng.integers(0, positions.size, 7).astype(np.int32)):
        cols = _UserColumns(store, positions, ("a", "b"))
        whole = _UserColumns(store, positions, ("a", "b"))
        for name in ("a", "b"):
            assert np.array_equal(cols.take(name, rows), whole[name][rows])


def test_rows_positions_found_once_per_rows_object() -> None:
    store = _store(100)
    cols = _UserColumns(store, np.arange(0, 100, 2), ("a", "b"))
    rows = np.array([3, 1, 4, 1, 5])
    first = cols._buffer_rows(rows)
    assert cols._buffer_rows(rows) is first  # same object: the memo
    assert np.array_equal(first, np.array([6, 2, 8, 2, 10]))
    other = rows.copy()  # an equal but different object: found again, same values
    assert cols._buffer_rows(other) is not first
    assert np.array_equal(cols._buffer_rows(other), first)


def test_one_run_rows_index_as_numpy_does() -> None:
    """Past the held rows: IndexError (not a read of another detector's row); negative
    rows count from the end, as numpy indexing of the gathered column does."""
    store = _store(100)
    cols = _UserColumns(store, np.arange(10, 20), ("a",))
    with pytest.raises(IndexError):
        cols.take("a", np.array([0, 10]))
    assert np.array_equal(cols.take("a", np.array([-1])), store.columns["a"][[19]])
    assert np.array_equal(cols.take("a", np.array([9, 0])), store.columns["a"][[19, 10]])
