"""nginx as an HTTP/2 cleartext (prior knowledge) server inside a pod, for the end-to-end tests.

One configuration with the variants the suites need: the answer of ``location /`` (a string, or
JSON with ``default_type application/json``), files served from the directory (``/big.bin``),
and the number of requests nginx takes on one connection before its GOAWAY
(``keepalive_requests``, nginx's default 1000 when not given).
"""

from __future__ import annotations

from pathlib import Path

from tests.harness.node import Pod

__all__ = ["H2C_PORT", "start_h2c_nginx", "write_h2c_config"]

H2C_PORT = 8081

_CONF = """
user root;
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 256; }}
http {{
    access_log off;{keepalive}
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen {port} http2;
        location / {{{default_type}
            return 200 {answer};
        }}{files}
    }}
}}
"""


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
    conf = directory / "nginx.conf"
    conf.write_text(
        _CONF.format(
            dir=directory,
            port=H2C_PORT,
            answer=answer,
            default_type="\n            default_type application/json;" if json else "",
            files=served,
            keepalive=""
            if keepalive_requests is None
            else f"\n    keepalive_requests {keepalive_requests};",
        )
    )
    return conf


def start_h2c_nginx(pod: Pod, conf: Path, *, label: str = "nginx") -> None:
    """Run nginx with ``conf`` in ``pod`` (the harness stops it) and wait for its port."""
    pod.spawn(["nginx", "-c", str(conf)], capture=False, label=label)
    pod.wait_for_port(("127.0.0.1", H2C_PORT))
