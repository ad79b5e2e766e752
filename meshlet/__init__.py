"""meshlet: a service mesh for Kubernetes.

This package holds what every component shares: the version, the ``meshlet`` command-line
dispatcher, the mesh's names and defaults (:mod:`meshlet.names`), duration parsing, logging
set-up, and serving a FastAPI app over TLS that reloads its certificate from disk.
"""

__version__ = "0.1.0"
