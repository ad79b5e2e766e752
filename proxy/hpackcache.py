"""An HPACK decoder that remembers header blocks which leave its dynamic table as it was.

The proxy decodes every header block it relays (for metrics, routing and tap), and on a busy
connection most blocks repeat byte for byte: once a client has sent its first request, its later
requests are a handful of indexed fields (``82 84 86 be bf``), and a server's usual answer is
too. Decoding such a block again gives the same headers as long as the dynamic table is the one
it was decoded against. So ``CachingDecoder`` wraps ``hpack.Decoder``:

- after each decode it compares the table's state (entry count, the newest entry by identity,
  the table's size limit) with the state before; unchanged means the block only read the table,
  and its headers are kept under its bytes;
- any block that changed the table (an insertion, an eviction, a size update) empties the cache,
  because every dynamic index may now name another entry;
- setting ``max_allowed_table_size`` (from SETTINGS) empties it too, so the size check the
  decoder makes after each block is never skipped for a block it would now refuse.

Identity of the newest entry is a safe change marker: the cache keeps a reference to it, so a new
entry can never be a recycled object at the same address. The cache is bounded (``limit``
blocks; emptied when full), so a peer sending endless distinct read-only blocks costs a little
memory and nothing else.
"""

from __future__ import annotations

from typing import Final

import hpack

__all__ = ["CachingDecoder"]

_LIMIT: Final = 64

Headers = list[tuple[bytes, bytes]]


class CachingDecoder:
    """``hpack.Decoder`` (``raw=True``) with a cache of table-neutral blocks."""

    __slots__ = ("_cache", "_decoder", "_limit", "_table")

    def __init__(self, limit: int = _LIMIT) -> None:
        self._decoder = hpack.Decoder()
        self._table = self._decoder.header_table
        self._cache: dict[bytes, tuple[tuple[bytes, bytes], ...]] = {}
        self._limit = limit

    @property
    def max_allowed_table_size(self) -> int:
        return int(self._decoder.max_allowed_table_size)

    @max_allowed_table_size.setter
    def max_allowed_table_size(self, size: int) -> None:
        self._cache.clear()
        self._decoder.max_allowed_table_size = size

    @property
    def max_header_list_size(self) -> int:
        return int(self._decoder.max_header_list_size)

    @max_header_list_size.setter
    def max_header_list_size(self, size: int) -> None:
        self._cache.clear()
        self._decoder.max_header_list_size = size

    def decode(self, block: bytes) -> Headers:
        """The block's headers as raw byte pairs; raises ``hpack.HPACKError`` as hpack does."""
        cached = self._cache.get(block)
        if cached is not None:
            return list(cached)
        entries = self._table.dynamic_entries
        count, newest, maxsize = len(entries), entries[0] if entries else None, self._table.maxsize
        try:
            headers: Headers = self._decoder.decode(block, raw=True)  # type: ignore[assignment]
        except BaseException:
            self._cache.clear()  # a failed block may have changed the table part way
            raise
        if (
            len(entries) == count
            and (entries[0] if entries else None) is newest
            and self._table.maxsize == maxsize
        ):
            if len(self._cache) >= self._limit:
                self._cache.clear()
            self._cache[block] = tuple(headers)
        else:
            self._cache.clear()
        return headers
