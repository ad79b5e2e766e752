"""nginx inside a pod (the end-to-end tests) or on loopback (the benchmarks).

``write_nginx_config`` writes the configuration every nginx here runs with (one worker, in the
foreground, its pid and temporary files in its directory, errors to stderr, no access log) around
the caller's ``server`` blocks; ``answer_server`` is a block answering 200 at ``/``.

``write_h2c_config`` is the variant the suites use: HTTP/2 cleartext (prior knowledge) on
``H2C_PORT`` with the answer of ``location /`` (a string, or JSON with ``default_type
application/json``), files served from the directory (``/big.bin``), and the number of requests
nginx takes on one connection before its GOAWAY (``keepalive_requests``, nginx's default 1000
when not given).
"""

from __future__ import annotations

import os
from pathlib import Path

from tests.harness.node import Pod

__all__ = [
    "H2C_PORT",
    "answer_server",
    "start_h2c_nginx",
    "write_h2c_config",
    "write_nginx_config",
]

H2C_PORT = 8081

_CONF = """
{user}worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;{keepalive}
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;{servers}
}}
"""


def answer_server(listen: str, answer: str, *, json: bool = False, locations: str = "") -> str:
    """A ``server`` block on ``listen`` (nginx syntax: ``8081 http2``, ``127.0.0.1:8080``)
    answering 200 ``answer`` (nginx syntax: quoted, variables allowed) at ``/``, as JSON when
    ``json``; ``locations`` are more ``location`` lines."""
    default_type = "\n            default_type application/json;" if json else ""
    return (
        f"\n    server {{\n        listen {listen};\n        location / {{{default_type}"
        f"\n            return 200 {answer};\n        }}{locations}\n    }}"
    )


def write_nginx_config(
    directory: Path, servers: str, *, keepalive_requests: int | None = None
) -> Path:
    """Write ``directory/nginx.conf`` (the directory must exist) serving ``servers`` (``server``
    blocks, nginx syntax) and return its path. nginx runs as root when started by root (the
    tests' pods), as the caller otherwise."""
    keepalive = (
        "" if keepalive_requests is None else f"\n    keepalive_requests {keepalive_requests};"
    )
    conf = directory / "nginx.conf"
    conf.write_text(
        _CONF.format(
            user="user root;\n" if os.geteuid() == 0 else "",
            dir=directory,
            keepalive=keepalive,
            servers=servers,
        )
    )
    return conf


def write_h2c_config(
    directory: Path,
    *,
    answer: str = '"h2 ok\\n"',
    json: bool = False,
    files: tuple[str, ...] = (),
    keepalive_requests: int | None = None,
) -> Path:
    """Write ``directory/nginx.conf`` (the directory must exist) and return its path.

    ``answer`` is nginx syntax (quoted, variables allowed); ``files`` are names served from
    ``directory`` at ``/<name>``."""
    served = "".join(f"\n        location = /{name} {{ root {directory}; }}" for name in files)
    server = answer_server(f"{H2C_PORT} http2", answer, json=json, locations=served)
    return write_nginx_config(directory, server, keepalive_requests=keepalive_requests)


def start_h2c_nginx(pod: Pod, conf: Path, *, label: str = "nginx") -> None:
    """Run nginx with ``conf`` in ``pod`` (the harness stops it) and wait for its port."""
    pod.spawn(["nginx", "-c", str(conf)], capture=False, label=label)
    pod.wait_for_port(("127.0.0.1", H2C_PORT))
