"""Header blocks the proxy encodes itself (``proxy/h2frames.py``): literal fields any HPACK decoder
reads without touching its table, and the per-connection cache of recent blocks."""

from __future__ import annotations

import hpack

from proxy.h2frames import BlockCache, encode_block

REQUEST = [(b":method", b"GET"), (b":path", b"/x"), (b":authority", b"web:80")]


def _decode(block: bytes) -> list[tuple[bytes, bytes]]:
    decoder = hpack.Decoder()
    headers = decoder.decode(block, raw=True)
    assert len(decoder.header_table.dynamic_entries) == 0
    return [(bytes(name), bytes(value)) for name, value in headers]


def test_a_cached_block_is_the_block_encode_block_makes() -> None:
    cache = BlockCache()
    long_value = [(b"x-long", b"v" * 300)]  # lengths over 126 take a multi-byte integer
    for headers in (REQUEST, long_value, REQUEST, long_value, []):
        block = cache.encode(list(headers))
        assert block == encode_block(headers)
        assert _decode(block) == headers


def test_a_repeated_header_list_is_served_from_the_cache_and_a_changed_one_is_not() -> None:
    cache = BlockCache()
    first = cache.encode(REQUEST)
    assert cache.encode(list(REQUEST)) is first  # equal fields: the same bytes, not encoded again
    changed = [*REQUEST[:2], (b":authority", b"other:80")]
    assert _decode(cache.encode(changed)) == changed
    assert _decode(cache.encode(REQUEST)) == REQUEST


def test_the_cache_is_bounded_in_blocks_and_block_size() -> None:
    cache = BlockCache(limit=4, max_block=64)
    for index in range(10):
        headers = [(b"x-n", str(index).encode())]
        assert _decode(cache.encode(headers)) == headers
        assert len(cache._blocks) <= 4
    big = [(b"x-big", b"b" * 100)]
    assert _decode(cache.encode(big)) == big
    assert tuple(big) not in cache._blocks
