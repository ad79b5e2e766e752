"""``meshlet-proxy`` as its own process, with every connection's original destination fixed.

``python tests/proxy/fixed_proxy.py <port>`` runs ``proxy.__main__.main`` (settings from the
``MESHLET_PROXY_*`` environment, logging, signals, exit code) with a resolver answering
``127.0.0.1:<port>``: the one thing loopback cannot give without iptables (the namespace tests
in tests/proxy_e2e cover the real SO_ORIGINAL_DST).
"""

from __future__ import annotations

import sys

from proxy.__main__ import main

if __name__ == "__main__":
    target = ("127.0.0.1", int(sys.argv[1]))
    sys.exit(main([], resolver=lambda _sock: target))
