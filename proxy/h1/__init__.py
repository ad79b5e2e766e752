"""The proxy's HTTP/1.1 core without I/O: llhttp parsing, field rules, head writing.

``proxy/http1.py`` is the Trio shell around it. See ``parse.py`` for the theory of operation.
"""

from proxy.h1.events import (
    CHUNKED,
    CLOSED,
    LENGTH,
    NO_BODY,
    UNTIL_CLOSE,
    End,
    Event,
    ParseError,
    RequestHead,
    ResponseHead,
    Truncated,
)
from proxy.h1.fields import FieldError, Fields, read_fields, trailer_fields
from proxy.h1.parse import HEAD_LIMIT, RequestReader, ResponseReader

__all__ = [
    "CHUNKED",
    "CLOSED",
    "HEAD_LIMIT",
    "LENGTH",
    "NO_BODY",
    "UNTIL_CLOSE",
    "End",
    "Event",
    "FieldError",
    "Fields",
    "ParseError",
    "RequestHead",
    "RequestReader",
    "ResponseHead",
    "ResponseReader",
    "Truncated",
    "read_fields",
    "trailer_fields",
]
