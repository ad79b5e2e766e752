"""The sidecar injector: a mutating admission webhook (FastAPI) and ``meshlet inject``."""
