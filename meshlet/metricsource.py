"""Where ``meshlet stat`` and ``meshlet edges`` read: proxies' admin ports, or Prometheus.

The I/O shell around ``metricsread``: blocking HTTP over ``urllib`` (a CLI that asks a few
servers once needs no event loop), bodies capped in size, every failure turned into one
``SourceError`` whose message names the address and what went wrong, so the command prints one
line and exits non-zero instead of a traceback.

Admin mode scrapes every proxy at once (one thread each), waits the window, scrapes them all
again and keeps the difference (``PodWindow``). A proxy is named by the operator
(``[NAMESPACE/]NAME=HOST:PORT``) or by its ``meshlet_proxy_info`` gauge, else by its address.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from meshlet.metricsread import MetricsFormatError, Scrape, SeriesKey, parse_metrics, window_deltas

__all__ = [
    "INFO_METRIC",
    "MAX_BODY_BYTES",
    "AdminTarget",
    "OptionError",
    "PodWindow",
    "PrometheusClient",
    "SourceError",
    "Vector",
    "fetch_metrics",
    "parse_admin_target",
    "pod_windows",
    "scrape_all",
    "scrape_window",
]

INFO_METRIC: Final = "meshlet_proxy_info"
"""The gauge that names a proxy's pod: ``meshlet_proxy_info{namespace,pod,workload} 1``."""

MAX_BODY_BYTES: Final = 16 * 1024 * 1024
"""A proxy's page is a few hundred kB even at the authority cap; Prometheus answers are smaller."""

_PROXY_FAMILY: Final = "\n# TYPE response_total counter\n"
"""Every proxy page declares its families, with or without samples yet."""
_PROMETHEUS_ERROR_STATUSES: Final = frozenset({400, 422, 503})
_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")
_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,251}[A-Za-z0-9])?$")

Keep = Callable[[str], bool] | None
"""Which sample lines of a page to parse (None: all)."""

Vector = list[tuple[dict[str, str], float]]
"""An instant vector: each series' labels and value."""

_T = TypeVar("_T")


class SourceError(Exception):
    """A metrics source that could not be read; the message is the whole explanation."""


class OptionError(SourceError):
    """An option the user gave cannot be used (a usage error: the commands exit 2)."""


@dataclass(frozen=True, slots=True)
class AdminTarget:
    """One proxy's admin address, with the workload name the operator gave it (or empty)."""

    address: str
    name: str = ""
    namespace: str = ""


@dataclass(frozen=True, slots=True)
class PodWindow:
    """What one proxy counted during the window, and the workload it belongs to."""

    address: str
    namespace: str
    workload: str
    pod: str
    seconds: float
    deltas: dict[SeriesKey, float]


def parse_admin_target(text: str) -> AdminTarget:
    """``HOST:PORT``, ``NAME=HOST:PORT`` or ``NAMESPACE/NAME=HOST:PORT``."""
    name, sep, address = text.rpartition("=")
    namespace, _, name = name.rpartition("/") if sep else ("", "", "")
    match = _HOST_PORT.match(address)
    if match is None or not 0 < int(match.group(2)) < 65536:
        raise OptionError(
            f"--admin {text!r}: expected HOST:PORT, NAME=HOST:PORT or NS/NAME=HOST:PORT"
        )
    for part in (name, namespace) if sep else ():
        if part and not _NAME.match(part):
            raise OptionError(f"--admin {text!r}: {part!r} is not a Kubernetes name")
    if sep and not name:
        raise OptionError(f"--admin {text!r}: the name before '=' is empty")
    return AdminTarget(address=address, name=name, namespace=namespace)


def _get(url: str, timeout: float, what: str, json_errors: bool = False) -> bytes:
    """The body of a 200 answer (or, with ``json_errors``, of Prometheus' JSON error answers)."""
    request = urllib.request.Request(url, headers={"Accept": "text/plain, application/json"})  # noqa: S310 (http only, checked by callers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            body: bytes = response.read(MAX_BODY_BYTES + 1)
    except urllib.error.HTTPError as error:
        if json_errors and error.code in _PROMETHEUS_ERROR_STATUSES:
            return bytes(error.read(MAX_BODY_BYTES))
        detail = error.read(300).decode("utf-8", "replace").strip()
        raise SourceError(
            f"{what}: HTTP {error.code} {error.reason}: {detail}".rstrip(": ")
        ) from None
    except urllib.error.URLError as error:
        raise SourceError(f"{what}: cannot connect: {error.reason}") from None
    except TimeoutError:
        raise SourceError(f"{what}: no answer within {timeout:g}s") from None
    except UnicodeError:  # the idna codec refuses the host name before any lookup
        raise SourceError(f"{what}: cannot resolve the host name (not a valid DNS name)") from None
    except OSError as error:
        raise SourceError(f"{what}: {error}") from None
    if len(body) > MAX_BODY_BYTES:
        raise SourceError(f"{what}: answer larger than {MAX_BODY_BYTES} bytes")
    return body


def fetch_metrics(address: str, timeout: float, keep: Keep = None) -> Scrape:
    """GET ``http://address/metrics`` and parse it."""
    what = f"proxy admin {address}"
    body = _get(f"http://{address}/metrics", timeout, what)
    try:
        text = body.decode("utf-8")
        scrape = parse_metrics(text, keep)
    except (UnicodeDecodeError, MetricsFormatError) as error:
        raise SourceError(f"{what}: /metrics is not Prometheus text: {error}") from None
    if _PROXY_FAMILY not in "\n" + text:
        raise SourceError(f"{what}: /metrics has no response_total family: not a meshlet proxy")
    return scrape


def _all(function: Callable[[AdminTarget], _T], targets: Sequence[AdminTarget]) -> list[_T]:
    with ThreadPoolExecutor(max_workers=min(16, len(targets))) as pool:
        return list(pool.map(function, targets))


def _identify(target: AdminTarget, scrape: Scrape) -> tuple[str, str, str]:
    """(namespace, workload, pod): the operator's name first, then ``meshlet_proxy_info``."""
    info: dict[str, str] = {}
    for (name, labels), _ in scrape.values.items():
        if name == INFO_METRIC:
            info = dict(labels)
            break
    pod = info.get("pod") or target.address
    if target.name:
        return target.namespace or info.get("namespace", ""), target.name, pod
    return info.get("namespace", ""), info.get("workload") or info.get("pod") or target.address, pod


def _keep_info(keep: Keep) -> Keep:
    if keep is None:
        return None
    wanted = keep

    def keep_info(line: str) -> bool:
        return line.startswith(INFO_METRIC) or wanted(line)

    return keep_info


def scrape_all(
    targets: Sequence[AdminTarget], timeout: float, keep: Keep = None
) -> list[tuple[float, Scrape]]:
    """Scrape every target at once (one thread each): ``(monotonic time, page)`` per target;
    raise on the first failure. ``meshlet_proxy_info`` is always kept, it names the pod."""
    wanted = _keep_info(keep)

    def scrape(target: AdminTarget) -> tuple[float, Scrape]:
        return time.monotonic(), fetch_metrics(target.address, timeout, wanted)

    return _all(scrape, targets)


def pod_windows(
    targets: Sequence[AdminTarget],
    first: Sequence[tuple[float, Scrape]],
    second: Sequence[tuple[float, Scrape]],
) -> list[PodWindow]:
    """What each target counted between two ``scrape_all`` rounds."""
    pods: list[PodWindow] = []
    for target, (started, before), (ended, after) in zip(targets, first, second, strict=True):
        namespace, workload, pod = _identify(target, after)
        pods.append(
            PodWindow(
                address=target.address,
                namespace=namespace,
                workload=workload,
                pod=pod,
                seconds=max(ended - started, 1e-3),
                deltas=window_deltas(before, after),
            )
        )
    return pods


def scrape_window(
    targets: Sequence[AdminTarget], window: float, timeout: float, keep: Keep = None
) -> list[PodWindow]:
    """Scrape every target, wait ``window`` seconds, scrape again; raise on the first failure.

    ``keep`` selects the sample lines to parse (``parse_metrics``); ``meshlet_proxy_info`` is
    always kept, it names the pod.
    """
    first = scrape_all(targets, timeout, keep)
    time.sleep(window)
    return pod_windows(targets, first, scrape_all(targets, timeout, keep))


class PrometheusClient:
    """Instant queries against Prometheus' HTTP API (``GET /api/v1/query``)."""

    def __init__(self, url: str, timeout: float) -> None:
        try:
            parsed = urllib.parse.urlsplit(url)
        except ValueError as error:  # "Invalid IPv6 URL"
            raise OptionError(f"--prometheus {url!r}: {error}") from None
        if parsed.scheme not in {"http", "https"} or not parsed.netloc:
            raise OptionError(f"--prometheus {url!r}: expected an http:// or https:// URL")
        self._base = url.rstrip("/")
        self._timeout = timeout

    def query(self, promql: str) -> Vector:
        url = f"{self._base}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        what = f"prometheus {self._base}"
        body = _get(url, self._timeout, what, json_errors=True)
        try:
            answer: Any = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise SourceError(f"{what}: the answer is not JSON (is this Prometheus?)") from None
        if not isinstance(answer, dict) or answer.get("status") != "success":
            error = answer.get("error", "no error given") if isinstance(answer, dict) else answer
            raise SourceError(f"{what}: query failed: {error}: {promql}")
        return _vector(answer.get("data"), what)


def _vector(data: Any, what: str) -> Vector:
    if not isinstance(data, dict) or data.get("resultType") != "vector":
        raise SourceError(f"{what}: expected an instant vector in the answer")
    vector: Vector = []
    try:
        for series in data["result"]:
            labels = {str(k): str(v) for k, v in series["metric"].items()}
            vector.append((labels, float(series["value"][1])))
    except (KeyError, TypeError, IndexError, ValueError, AttributeError):
        raise SourceError(f"{what}: malformed vector in the answer") from None
    return vector
