"""The proxy does not load h2's state machine until a client needs an HTTP/2 error answer."""

from __future__ import annotations

import subprocess
import sys


def test_the_proxy_process_does_not_import_h2() -> None:
    code = (
        "import sys, proxy.__main__, proxy.server, proxy.http2, proxy.h2mux, proxy.authz\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'h2'))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"
