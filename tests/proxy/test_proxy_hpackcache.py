"""The caching HPACK decoder gives exactly what hpack's own decoder gives, block after block."""

from __future__ import annotations

from collections.abc import Callable

import hpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.hpackcache import CachingDecoder

NAMES = [b":method", b":path", b":authority", b"user-agent", b"x-trace", b"cookie"]
VALUES = [b"GET", b"/", b"/a", b"web:80", b"h2load", b"x" * 40, b"y" * 300]

header = st.tuples(st.sampled_from(NAMES), st.sampled_from(VALUES))
# a step: a header list to encode (huffman or not; decoded once more when "again"), or a new
# encoder table size
step = st.one_of(
    st.tuples(
        st.just("block"), st.lists(header, min_size=1, max_size=5), st.booleans(), st.booleans()
    ),
    st.tuples(st.just("size"), st.sampled_from([0, 64, 256, 4096]), st.just(False), st.just(False)),
)


def _outcome(decode: Callable[[bytes], object], block: bytes) -> object:
    try:
        return decode(block)
    except hpack.HPACKError as exc:
        return type(exc)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(step, min_size=1, max_size=40), st.integers(min_value=1, max_value=8))
def test_decodes_like_hpack_for_any_sequence(
    steps: list[tuple[str, object, bool, bool]], limit: int
) -> None:
    encoder = hpack.Encoder()
    plain = hpack.Decoder()
    cached = CachingDecoder(limit=limit)

    def reference(block: bytes) -> object:
        return plain.decode(block, raw=True)

    in_sync = True  # the decoders' table is still the encoder's
    for kind, value, huffman, again in steps:
        if kind == "size":
            assert isinstance(value, int)
            encoder.header_table_size = value
            continue
        assert isinstance(value, list)
        block = encoder.encode(value, huffman=huffman)
        got = _outcome(cached.decode, block)
        assert got == _outcome(reference, block)
        if isinstance(got, type):
            # hpack's own encoder and decoder can disagree after some table size sequences
            # (both decoders raise alike above); the encoder's view is no reference after that
            in_sync = False
        elif in_sync:
            assert got == value
        if again:  # the same bytes again: from the cache when the block only read the table
            before = list(plain.header_table.dynamic_entries)
            assert _outcome(cached.decode, block) == _outcome(reference, block)
            in_sync = in_sync and list(plain.header_table.dynamic_entries) == before


def test_a_repeated_read_only_block_is_served_without_decoding() -> None:
    encoder = hpack.Encoder()
    decoder = CachingDecoder()
    request = [(b":method", b"GET"), (b":path", b"/"), (b":authority", b"web:80")]
    decoder.decode(encoder.encode(request))  # inserts :authority
    block = encoder.encode(request)  # all indexed now
    assert decoder.decode(block) == request
    entries = decoder._table.dynamic_entries
    entries[0] = (b":authority", b"changed-behind-the-cache")  # only a real decode would see it
    assert decoder.decode(block) == request


def test_a_block_that_inserts_empties_the_cache() -> None:
    encoder = hpack.Encoder()
    decoder = CachingDecoder()
    first = [(b":authority", b"a:80")]
    decoder.decode(encoder.encode(first))
    read_only = encoder.encode(first)  # index 62 -> a:80
    assert decoder.decode(read_only) == first
    decoder.decode(encoder.encode([(b":authority", b"b:80")]))  # inserts: index 62 -> b:80
    assert decoder.decode(read_only) == [(b":authority", b"b:80")]


def test_settings_change_empties_the_cache_so_the_size_check_still_runs() -> None:
    encoder = hpack.Encoder()
    decoder = CachingDecoder()
    request = [(b":authority", b"web:80")]
    decoder.decode(encoder.encode(request))
    block = encoder.encode(request)
    decoder.decode(block)
    decoder.max_allowed_table_size = 0  # the peer's table (4096) is now over the limit
    with pytest.raises(hpack.HPACKError):
        decoder.decode(block)


def test_a_broken_block_raises_and_is_not_cached() -> None:
    decoder = CachingDecoder()
    with pytest.raises(hpack.HPACKError):
        decoder.decode(b"\xff\xff\xff\xff\xff\xff")
    with pytest.raises(hpack.HPACKError):
        decoder.decode(b"\xff\xff\xff\xff\xff\xff")
