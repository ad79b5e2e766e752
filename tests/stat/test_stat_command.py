"""``meshlet stat`` and ``meshlet edges`` as a user runs them: subprocesses against real HTTP
servers on 127.0.0.1 that serve canned proxy pages changing between scrapes, and a fake
Prometheus HTTP API."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from tests.stat.stat_canned import API_ID, WEB_ID, Page, http, tcp
from tests.stat.stat_servers import serve_pages, serve_prometheus

WINDOW = 0.3


def meshlet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshlet.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def web_pages() -> list[str]:
    """web: 20 inbound requests in the window (19 successes, one 503), 2 open connections."""
    before, after = Page(), Page()
    inbound = http("inbound", "web.default.svc.cluster.local:8080")
    before.serve(inbound, 200, 7, times=40)
    after.serve(inbound, 200, 7, times=40 + 19)
    after.serve(inbound, 503, 45, times=1)
    conn = tcp("inbound", "src", "10.0.0.1:8080")
    before.opened[conn] = after.opened[conn] = 2
    before.open_now[conn] = after.open_now[conn] = 2
    mtls = f'tls="true",server_id="{API_ID}",dst_namespace="default",dst_deployment="api"'
    after.serve(http("outbound", "api.default.svc.cluster.local:80", mtls), 200, 3, times=5)
    return [before.text(), after.text()]


def api_pages() -> list[str]:
    """api names itself with meshlet_proxy_info; it served web over mTLS and nothing else."""
    info = 'namespace="default",pod="api-7d9f-x2x",workload="api"'
    before, after = Page(info=info), Page(info=info)
    from_web = f'tls="true",client_id="{WEB_ID}"'
    after.serve(http("inbound", "api.default.svc.cluster.local:80", from_web), 200, 3, times=5)
    return [before.text(), after.text()]


def test_stat_over_admin_ports() -> None:
    with serve_pages(web_pages()) as web, serve_pages(api_pages()) as api:
        done = meshlet("stat", "--admin", f"default/web={web}", "--admin", api, "-t", f"{WINDOW}s")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == [
        "NAMESPACE", "NAME", "MESHED", "SUCCESS", "RPS",
        "LATENCY_P50", "LATENCY_P95", "LATENCY_P99", "TCP_CONN",
    ]  # fmt: skip
    api_row, web_row = (line.split() for line in lines[1:])
    assert api_row[:4] == ["default", "api", "1/1", "100.00%"]
    assert api_row[5:] == ["2ms", "2ms", "2ms", "0"]  # all five in (2, 3]
    # 19 in (5, 10] and one in (40, 50]: p50 = 5 + 5 * 10/19, p95 = 10, p99 = 40 + 10 * 0.8.
    assert web_row[:4] == ["default", "web", "1/1", "95.00%"]
    assert web_row[5:] == ["7ms", "10ms", "48ms", "2"]
    rps = float(web_row[4].removesuffix("rps"))
    assert 20 / 5 <= rps <= 20 / WINDOW  # 20 requests over the window and the scrapes' time


def test_stat_json() -> None:
    with serve_pages(web_pages()) as web:
        done = meshlet("stat", "--admin", f"web={web}", "-t", "200ms", "-o", "json")
    assert done.returncode == 0, done.stderr
    (row,) = json.loads(done.stdout)
    assert row["name"] == "web"
    assert row["namespace"] == ""
    assert row["meshed"] == "1/1"
    assert row["success"] == pytest.approx(0.95)
    assert row["latency_ms_p99"] == pytest.approx(48)
    assert row["tcp_open_connections"] == 2


def test_stat_without_a_name_uses_the_address() -> None:
    idle = Page().text()
    with serve_pages([idle]) as address:
        done = meshlet("stat", "--admin", address, "-t", "100ms")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1].split() == [address, "1/1", "-", "-", "-", "-", "-", "0"]


def test_edges_over_admin_ports() -> None:
    with serve_pages(web_pages()) as web, serve_pages(api_pages()) as api:
        done = meshlet("edges", "--admin", f"default/web={web}", "--admin", api, "-t", "200ms")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == [
        "SRC",
        "DST",
        "SRC_NS",
        "DST_NS",
        "SECURED",
        "CLIENT_ID",
        "SERVER_ID",
    ]
    assert lines[1].split() == ["web", "api", "default", "default", "√", WEB_ID, API_ID]
    assert len(lines) == 2
    with serve_pages(web_pages()) as web, serve_pages(api_pages()) as api:
        done = meshlet(
            "edges", "--admin", f"default/web={web}", "--admin", api, "-t", "100ms", "-o", "json"
        )
    assert json.loads(done.stdout) == [
        {
            "src": "web",
            "dst": "api",
            "src_namespace": "default",
            "dst_namespace": "default",
            "secured": True,
            "client_id": WEB_ID,
            "server_id": API_ID,
        }
    ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def assert_one_line_error(
    done: subprocess.CompletedProcess[str], *expected: str, status: int = 1
) -> None:
    assert done.returncode == status
    assert done.stdout == ""
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr
    for text in expected:
        assert text in done.stderr


@pytest.mark.parametrize("command", ["stat", "edges"])
def test_unreachable_admin_address(command: str) -> None:
    address = f"127.0.0.1:{free_port()}"
    with serve_pages([Page().text()]) as good:
        done = meshlet(command, "--admin", good, "--admin", address, "-t", "100ms")
    assert_one_line_error(done, f"meshlet {command}: proxy admin {address}: cannot connect")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        pytest.param(["--admin", "web=localhost"], "expected HOST:PORT", id="no-port"),
        pytest.param(["--admin", "=127.0.0.1:4191"], "name before '=' is empty", id="empty-name"),
        pytest.param(["--admin", "127.0.0.1:4191", "-t", "soon"], "invalid duration", id="window"),
        pytest.param(
            ["--admin", "a=127.0.0.1:4191", "--admin", "127.0.0.1:4191"], "given twice", id="twice"
        ),
        pytest.param(
            ["--admin", "127.0.0.1:4191", "-t", "2h"], "must be between", id="long-window"
        ),
        pytest.param(["--prometheus", "ftp://x"], "expected an http://", id="prometheus-url"),
        pytest.param(["--prometheus", "http://x", "-n", "Bad_NS"], "not a Kubernetes", id="ns"),
    ],
)
def test_bad_options(args: list[str], expected: str) -> None:
    assert_one_line_error(meshlet("stat", *args), expected, status=2)


def test_admin_port_that_is_not_a_proxy() -> None:
    with serve_pages(["<html>hello</html>\n"]) as address:
        done = meshlet("stat", "--admin", address, "-t", "100ms")
    assert_one_line_error(done, f"proxy admin {address}: /metrics has no response_total family")
    broken = Page().text() + 'response_total{direction="inbound"} many\n'
    with serve_pages([broken]) as address:
        done = meshlet("stat", "--admin", address, "-t", "100ms")
    assert_one_line_error(done, f"proxy admin {address}: /metrics is not Prometheus text")


def test_admin_port_too_slow() -> None:
    with serve_pages([Page().text()], delay=2.0) as address:
        done = meshlet("stat", "--admin", address, "-t", "100ms", "--timeout", "300ms")
    assert_one_line_error(done, f"proxy admin {address}:", "0.3s")


def test_admin_port_without_metrics() -> None:
    with serve_prometheus(lambda promql: []) as (url, _):
        address = url.removeprefix("http://")
        done = meshlet("edges", "--admin", address, "-t", "100ms")
    assert_one_line_error(done, f"meshlet edges: proxy admin {address}: HTTP 404")


def prometheus_answers(promql: str) -> list[tuple[dict[str, str], float]]:  # noqa: PLR0911
    web = {"namespace": "default", "deployment": "web"}
    api = {"namespace": "default", "deployment": "api"}
    if promql.startswith("up{"):
        return [
            ({**web, "pod": "web-1"}, 1.0),
            ({**web, "pod": "web-2"}, 1.0),
            ({**api, "pod": "a"}, 1.0),
        ]
    if promql.startswith("sum(increase(response_total") and 'direction="inbound"' in promql:
        if "client_id" in promql:  # edges
            return [({**api, "client_id": WEB_ID, "tls": "true"}, 30.0)]
        return [
            ({**web, "classification": "success", "tls": "true"}, 117.0),
            ({**web, "classification": "failure", "tls": "true"}, 3.0),
        ]
    if promql.startswith("sum(increase(response_total"):
        out = {**web, "dst_namespace": "default", "dst_deployment": "api", "tls": "true"}
        return [({**out, "server_id": API_ID}, 30.0)]
    if promql.startswith("histogram_quantile(0.5,"):
        return [(web, 4.2)]
    if promql.startswith("histogram_quantile"):
        return [(web, 97.0)]
    if promql.startswith("sum(tcp_open_connections"):
        return [(web, 5.0), (api, 1.0)]
    return []


def test_stat_over_prometheus() -> None:
    with serve_prometheus(prometheus_answers) as (url, asked):
        done = meshlet("stat", "--prometheus", url, "-n", "default")
    assert done.returncode == 0, done.stderr
    assert [line.split() for line in done.stdout.splitlines()[1:]] == [
        ["default", "api", "1/1", "-", "-", "-", "-", "-", "1"],
        ["default", "web", "2/2", "97.50%", "2.0rps", "4ms", "97ms", "97ms", "5"],
    ]
    assert (
        'sum(increase(response_total{direction="inbound",namespace="default"}[1m])) '
        "by (namespace, deployment, classification, tls)"
    ) in asked


def test_edges_over_prometheus() -> None:
    with serve_prometheus(prometheus_answers) as (url, asked):
        done = meshlet("edges", "--prometheus", url, "-t", "5m", "-o", "json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [
        {
            "src": "web",
            "dst": "api",
            "src_namespace": "default",
            "dst_namespace": "default",
            "secured": True,
            "client_id": WEB_ID,
            "server_id": API_ID,
        }
    ]
    assert all("[5m]" in promql for promql in asked)


def test_prometheus_query_error_is_one_line() -> None:
    with serve_prometheus(lambda promql: "parse error: unexpected character") as (url, _):
        done = meshlet("stat", "--prometheus", url)
    assert_one_line_error(done, "query failed: parse error: unexpected character")


def test_prometheus_unreachable() -> None:
    done = meshlet("stat", "--prometheus", f"http://127.0.0.1:{free_port()}")
    assert_one_line_error(done, "meshlet stat: prometheus http://127.0.0.1:", "cannot connect")


def test_minimal_proxy_page() -> None:
    page = (
        "# TYPE response_total counter\n# TYPE tcp_open_connections gauge\n"
        'tcp_open_connections{direction="inbound",peer="src",target_addr="10.0.0.1:8080",'
        'tls="no_identity",no_tls_reason="disabled"} 3\n'
    )
    with serve_pages([page]) as address:
        done = meshlet("stat", "--admin", f"default/web={address}", "-t", "100ms")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1].split() == ["default", "web", "1/1", *["-"] * 5, "3"]
