"""``meshlet-webhook`` loads kubernetes-asyncio only when it talks to a cluster."""

from __future__ import annotations

import subprocess
import sys


def test_webhook_entry_point_does_not_import_kubernetes_asyncio() -> None:
    """``--help``, a local ``--cluster`` file and start-up errors should not pay for the
    Kubernetes client's import (~1.8 s of CPU): webhook.cabundle is imported only when the
    caBundle keeper runs."""
    probe = "import sys, webhook.__main__; print('kubernetes_asyncio' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "False", result.stderr
