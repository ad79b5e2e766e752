"""``meshlet tap ADDR``: print a proxy's live requests and responses, one line per event.

ADDR is the proxy's tap address (``host:port``, ``[v6]:port``, or ``host`` for the tap port
4190); the admin port 4191 is accepted too and means the tap port on the same host. The tap
serves loopback clients only, so run it in the pod or through
``kubectl port-forward pod/NAME 4190``. Lines read like Linkerd's::

    req id=3:1 proxy=in src=10.0.0.9:4100 dst=10.0.0.2:80 tls=true :method=GET :authority=w :path=/
    rsp id=3:1 proxy=in src=10.0.0.9:4100 dst=10.0.0.2:80 tls=true :status=200 latency=1500µs
    end id=3:1 proxy=in src=10.0.0.9:4100 dst=10.0.0.2:80 tls=true duration=25µs response-length=2B

``-o wide`` adds the scheme and the TLS identities; ``-o json`` prints the server's NDJSON as is.

From outside the pod, tap over mTLS with a mesh certificate whose identity the proxy lists in
``MESHLET_PROXY_TAP_AUTHORIZED_IDENTITIES``: ``--cert``/``--key`` (PEM), ``--cacert`` (the
mesh's trust anchors) and ``--identity`` (the proxy's own identity, checked on its certificate).
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import socket
import ssl
import sys
from collections.abc import Iterator
from typing import Final
from urllib.parse import urlencode

from meshlet import names
from proxy.tap import DEFAULT_MAX_RPS, MAX_RPS_LIMIT

__all__ = ["format_event", "main", "parse_target"]

_CONNECT_TIMEOUT: Final = 5.0
_MAX_LINE: Final = 1 << 20
_PROXY: Final = {"inbound": "in", "outbound": "out"}
_GRPC_CODES: Final = (
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
    "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
)  # fmt: skip


class TapCommandError(Exception):
    """What went wrong, in one sentence for the user (exit status 1)."""


def parse_target(text: str) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]:port`` (optionally ``http://``-prefixed) → (host, port)."""
    value = text.strip().removeprefix("http://").rstrip("/")
    if not value or "/" in value or "@" in value:
        raise ValueError(f"{text!r} is not HOST[:PORT]")
    if value.startswith("["):
        host, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r} is not [IPV6]:PORT")
        port_text = rest[1:]
    elif value.count(":") == 1:
        host, _, port_text = value.partition(":")
    elif ":" in value:
        host, port_text = value, ""  # a bare IPv6 address
    else:
        host, port_text = value, ""
    if not port_text:
        return host, names.PROXY_TAP_PORT
    if not port_text.isdigit() or not 0 < int(port_text) <= 65535:
        raise ValueError(f"{port_text!r} is not a port number")
    port = int(port_text)
    return host, names.PROXY_TAP_PORT if port == names.PROXY_ADMIN_PORT else port


def _grpc(code: object) -> str:
    if isinstance(code, int) and 0 <= code < len(_GRPC_CODES):
        return _GRPC_CODES[code]
    return str(code)


def format_event(record: dict[str, object], *, wide: bool = False) -> str | None:
    """One tap event as a Linkerd-style line (``None`` for records that are not events)."""
    kind = record.get("event")
    proxy = _PROXY.get(str(record.get("direction")), str(record.get("direction")))
    head = (
        f"id={record.get('id')} proxy={proxy} src={record.get('src')} dst={record.get('dst')} "
        f"tls={record.get('tls')}"
    )
    if kind == "request":
        line = (
            f"req {head} :method={record.get('method')} :authority={record.get('authority')} "
            f":path={record.get('path')}"
        )
        if wide:
            line += f" :scheme={record.get('scheme')}"
            for key in ("client_id", "server_id"):
                if record.get(key):
                    line += f" {key}={record[key]}"
        return line
    if kind == "response":
        return f"rsp {head} :status={record.get('status')} latency={record.get('latency_us')}µs"
    if kind == "end":
        line = f"end {head}"
        if record.get("grpc_status") is not None:
            line += f" grpc-status={_grpc(record['grpc_status'])}"
        if record.get("error"):
            line += f" error={record['error']}"
        return line + (
            f" duration={record.get('duration_us')}µs"
            f" response-length={record.get('response_bytes')}B"
        )
    return None


def _arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meshlet tap",
        description="Stream a proxy's live requests and responses (its tap port, loopback only).",
    )
    parser.add_argument("address", metavar="ADMIN_OR_TAP_ADDR", help="HOST[:PORT] of the proxy")
    parser.add_argument("--direction", choices=("inbound", "outbound"))
    parser.add_argument("--authority", help="only requests to this :authority (exact)")
    parser.add_argument("--path", help="only requests whose path starts with this")
    parser.add_argument("--method", help="only requests with this method")
    parser.add_argument("--status", help="only exchanges whose status is in this class (5xx)")
    parser.add_argument(
        "--max-rps",
        type=float,
        default=DEFAULT_MAX_RPS,
        help=f"most requests per second to show ({DEFAULT_MAX_RPS:g})",
    )
    parser.add_argument("-o", "--output", choices=("wide", "json"), help="output format")
    tls = parser.add_argument_group(
        "mTLS", "tap from outside the pod with an authorized mesh identity"
    )
    tls.add_argument("--cert", help="client certificate chain (PEM) carrying your mesh identity")
    tls.add_argument("--key", help="its private key (PEM)")
    tls.add_argument("--cacert", help="the mesh's trust anchors (PEM)")
    tls.add_argument(
        "--identity",
        help="the proxy's mesh identity; its certificate must carry it (default: any identity "
        "under --cacert)",
    )
    return parser


class _MeshConnection(http.client.HTTPConnection):
    """HTTP over TLS whose server name is a mesh identity, not the address dialled."""

    def __init__(
        self, host: str, port: int, *, context: ssl.SSLContext, identity: str | None
    ) -> None:
        super().__init__(host, port, timeout=_CONNECT_TIMEOUT)
        self._context = context
        self._identity = identity

    def connect(self) -> None:
        super().connect()
        self.sock = self._context.wrap_socket(self.sock, server_hostname=self._identity)


def _tls_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The client context for ``--cert``/``--key``/``--cacert``, or None (plaintext)."""
    given = [args.cert, args.key, args.cacert]
    if not any(given) and args.identity is None:
        return None
    if not all(given):
        raise TapCommandError("--cert, --key and --cacert go together (mTLS)")
    try:
        context = ssl.create_default_context(cafile=args.cacert)
        context.load_cert_chain(args.cert, args.key)
    except (OSError, ssl.SSLError) as exc:
        raise TapCommandError(f"cannot load the TLS files: {exc}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = args.identity is not None
    return context


def _query(args: argparse.Namespace) -> str:
    params = {
        key: value
        for key, value in (
            ("direction", args.direction),
            ("authority", args.authority),
            ("path", args.path),
            ("method", args.method),
            ("status", args.status),
            ("max_rps", f"{args.max_rps:g}"),
        )
        if value is not None
    }
    return urlencode(params)


def _open(
    host: str, port: int, query: str, tls: tuple[ssl.SSLContext, str | None] | None = None
) -> http.client.HTTPResponse:
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    connection = (
        http.client.HTTPConnection(host, port, timeout=_CONNECT_TIMEOUT)
        if tls is None
        else _MeshConnection(host, port, context=tls[0], identity=tls[1])
    )
    try:
        connection.request("GET", f"/tap?{query}", headers={"accept": "application/x-ndjson"})
        response = connection.getresponse()
    except ConnectionRefusedError:
        raise TapCommandError(
            f"{where} refused the connection: is the proxy running, and its tap on that port?"
        ) from None
    except TimeoutError:
        raise TapCommandError(f"{where} did not answer within {_CONNECT_TIMEOUT:g}s") from None
    except socket.gaierror as exc:
        raise TapCommandError(f"cannot resolve {host!r}: {exc.strerror}") from None
    except UnicodeError:  # the idna codec refuses the name (an empty or 64+ character label)
        raise TapCommandError(
            f"cannot resolve {host!r}: not a valid host name (each dot-separated label must be "
            "1 to 63 characters)"
        ) from None
    except ssl.SSLCertVerificationError as exc:
        raise TapCommandError(
            f"{where}'s certificate is not trusted: {exc.verify_message}"
        ) from None
    except ssl.SSLError as exc:
        raise TapCommandError(f"TLS with {where} failed: {exc.reason or exc}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise TapCommandError(f"cannot reach {where}: {exc}") from None
    if response.status != 200:
        message = response.read(4096).decode("utf-8", "replace").strip()
        hint = ""
        if response.status == 404 and port != names.PROXY_TAP_PORT:
            hint = f" (is that the tap port? it is {names.PROXY_TAP_PORT} by default)"
        raise TapCommandError(f"{where} answered {response.status}: {message}{hint}")
    if connection.sock is not None:
        connection.sock.settimeout(None)  # a quiet proxy may send nothing for hours
    return response


def _records(response: http.client.HTTPResponse) -> Iterator[tuple[bytes, dict[str, object]]]:
    while True:
        try:
            line = response.readline(_MAX_LINE)
        except (OSError, http.client.HTTPException):
            line = b""
        if not line:
            raise TapCommandError("the proxy ended the tap stream (did it shut down?)")
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise TapCommandError("the server sent a line that is not a tap event") from None
        if not isinstance(record, dict):
            raise TapCommandError("the server sent a line that is not a tap event")
        yield line, record


def _run(args: argparse.Namespace, host: str, port: int) -> None:
    context = _tls_context(args)
    tls = None if context is None else (context, args.identity)
    response = _open(host, port, _query(args), tls)
    for line, record in _records(response):
        if args.output == "json":
            sys.stdout.write(line.decode("utf-8", "replace").rstrip("\n") + "\n")
            sys.stdout.flush()
            continue
        if record.get("event") == "lost":
            print(
                f"meshlet tap: {record.get('dropped')} requests dropped (output slower than the "
                f"traffic), {record.get('rate_limited')} skipped by --max-rps so far",
                file=sys.stderr,
                flush=True,
            )
            continue
        text = format_event(record, wide=args.output == "wide")
        if text is not None:
            print(text, flush=True)


def main(argv: list[str]) -> int:
    args = _arguments().parse_args(argv)
    if not 0 < args.max_rps <= MAX_RPS_LIMIT:
        print(
            f"meshlet tap: --max-rps must be more than 0 and at most {MAX_RPS_LIMIT:g}",
            file=sys.stderr,
        )
        return 2
    try:
        host, port = parse_target(args.address)
    except ValueError as exc:  # a usage error, like a bad option: status 2
        print(f"meshlet tap: {exc}", file=sys.stderr)
        return 2
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="replace")  # "µs" on a terminal that cannot show it
    try:
        _run(args, host, port)
    except TapCommandError as exc:
        print(f"meshlet tap: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:  # `meshlet tap ... | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return 0
