"""The mesh end-to-end suite uses the namespace harness."""

from __future__ import annotations

from tests.harness.fixtures import node

__all__ = ["node"]
