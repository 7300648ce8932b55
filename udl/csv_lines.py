"""Physical line numbers of CSV/TSV records, found in the bytes as pyarrow's parser reads them.

pyarrow numbers records but not lines, and a quoted field may hold line breaks, so a record
number is not a line number (record 482 may start on line 1727). `LineScanner` follows the
same grammar as pyarrow's parser (`newlines_in_values=True`, double-quote escaping, empty
lines skipped) over the bytes fed to it:

- a line break is ``\\n``, ``\\r\\n`` or a lone ``\\r``, in a quoted field or not;
- a quote run that starts a field (after a delimiter, a line break, or at the start of the
  file) opens a quoted field; in a quoted field ``""`` is a quote and a lone ``"`` closes it;
  any other quote is a plain character;
- a line break outside a quoted field ends a record; a record cannot be empty, so an empty
  line is skipped (as pyarrow's ``ignore_empty_lines``).

Record 0 is the header. Quote state is tracked by prefix parity (vectorised), which agrees
with the grammar as long as every quote run met outside a quoted field starts a field; a
block where one does not (``5 " tall``) is replayed run by run.

pyarrow reads the stream on its own I/O thread while the caller asks for lines, so the start
lines are shared under a lock.
"""

from __future__ import annotations

import threading

import numpy as np
from numpy.typing import NDArray

__all__ = ["LineScanner"]

QUOTE, LF, CR = ord('"'), ord("\n"), ord("\r")


class LineScanner:
    """Start line (1-based) of every record of a delimited byte stream, fed block by block."""

    def __init__(self, delimiter: str) -> None:
        self._delimiter = ord(delimiter)
        self._held = b""  # the last byte fed: whether it breaks a line depends on the next one
        self._offset = 0  # stream position of the first byte not yet scanned
        self._breaks = 0  # line breaks before that position
        self._quoted = False  # whether that position lies inside a quoted field
        self._previous = -1  # the byte before that position (-1: start of the stream)
        self._literal = False  # whether the last quote scanned was a plain character
        self._starts: list[NDArray[np.int64]] = []  # start lines of records, in order
        self._lock = threading.Lock()  # guards `_starts` and `_first`
        self._first = 0  # record number of the first start kept in `_starts`

    def feed(self, data: bytes, final: bool = False) -> None:
        """Scan the next bytes of the stream (`final`: they are its last)."""
        data = self._held + data
        self._held = b"" if final else data[-1:]
        size = len(data) if final else len(data) - 1
        if not size:
            return
        whole = np.frombuffer(data, dtype=np.uint8)  # `size` bytes to scan, and the next one
        block = whole[:size]
        quotes = np.flatnonzero(block == QUOTE)
        inside = self._quote_states(block, quotes)
        # A line break ends at a LF, or at a CR not followed by LF (sparse: no full-size mask).
        breaks = np.flatnonzero(block == LF)
        returns = np.flatnonzero(block == CR)
        if len(returns):
            nexts = whole[np.minimum(returns + 1, len(whole) - 1)]
            lone = returns[(nexts != LF) | (returns + 1 >= len(whole))]
            breaks = np.sort(np.concatenate([breaks, lone])) if len(lone) else breaks
        # Outside quotes a break ends a record, and one starts at the next byte unless that
        # byte is another break (an empty line) or the end of the stream.
        ends = np.flatnonzero(~inside[np.searchsorted(quotes, breaks)])  # indices into breaks
        ends = ends[breaks[ends] + 1 < len(whole)]
        following = whole[breaks[ends] + 1]
        ends = ends[(following != LF) & (following != CR)]
        # The record after break i starts on line i + 2 of this block's lines.
        lines = self._breaks + 2 + ends
        if self._offset == 0 and block[0] not in (LF, CR):
            lines = np.concatenate([[1], lines])
        with self._lock:
            self._starts.append(lines.astype(np.int64))
        self._offset += size
        self._breaks += len(breaks)
        self._quoted = bool(inside[-1])
        self._previous = int(block[-1])

    def _quote_states(self, block: NDArray[np.uint8], quotes: NDArray[np.int64]) -> NDArray:
        """Whether the text after each quote of `block` (and before the first: index 0) is
        inside a quoted field; element i is the state before quote i, the last after all."""
        before = np.empty(len(quotes), dtype=np.int64)
        before[1:] = block[quotes[1:] - 1]
        if len(quotes):
            before[0] = block[quotes[0] - 1] if quotes[0] else self._previous
        parity = (np.arange(len(quotes) + 1) + self._quoted) % 2 == 1
        # A run start (previous byte not a quote) met outside quotes must start a field.
        run_start = before != QUOTE
        field_start = (before == self._delimiter) | (before == LF) | (before == CR) | (before < 0)
        continues_literal = self._literal and len(quotes) and not run_start[0]
        if not continues_literal and np.all(field_start | ~run_start | parity[:-1]):
            self._literal = False
            return parity
        return self._replay(quotes, run_start, field_start)

    def _replay(
        self, quotes: NDArray[np.int64], run_start: NDArray[np.bool_], field_start: NDArray
    ) -> NDArray[np.bool_]:
        """The quote states of `_quote_states`, by the grammar, one quote run at a time."""
        states = np.empty(len(quotes) + 1, dtype=bool)
        states[0] = quoted = self._quoted
        literal = self._literal  # the current run is text: it met no quoted field nor field start
        for i in range(len(quotes)):
            if run_start[i]:
                literal = not quoted and not field_start[i]
            if not literal:
                quoted = not quoted
            states[i + 1] = quoted
        self._literal = literal
        return states

    def lines(self, records: NDArray[np.int64]) -> NDArray[np.int64]:
        """Start lines of `records` (record numbers, 0 = header), all scanned already."""
        with self._lock:
            kept = self._joined()
            return kept[np.asarray(records, dtype=np.int64) - self._first]

    def _joined(self) -> NDArray[np.int64]:
        if len(self._starts) != 1:
            self._starts = [np.concatenate([np.empty(0, np.int64), *self._starts])]
        return self._starts[0]

    @property
    def records(self) -> int:
        """How many records (the header included) the bytes fed so far start."""
        with self._lock:
            return self._first + sum(len(starts) for starts in self._starts)

    def forget_before(self, record: int) -> None:
        """Drop the start lines of records before `record`: they will not be asked for."""
        with self._lock:
            kept = self._joined()
            drop = min(max(0, record - self._first), len(kept))
            self._starts = [kept[drop:]]
            self._first += drop
