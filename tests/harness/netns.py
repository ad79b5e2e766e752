"""The harness's network namespaces: ``meshlet.localmesh.netns`` (product code, also used by
``meshlet demo``); ``HarnessError`` is its ``LocalMeshError``."""

from __future__ import annotations

from meshlet.localmesh.netns import LocalMeshError, Netns, Process, clean_env, new_name, run

HarnessError = LocalMeshError

__all__ = ["HarnessError", "Netns", "Process", "clean_env", "new_name", "run"]
