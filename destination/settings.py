"""``DestinationSettings``: every knob of ``meshlet-destination``, from flags or the environment.

A flag wins over its ``MESHLET_DESTINATION_*`` variable, which wins over the default. Errors are
one line naming the variable or flag and the value (``SettingsError``), never a traceback.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from meshlet.durations import DurationError, parse_duration
from meshlet.logs import LogFormat
from meshlet.names import DEFAULT_CONTROL_PLANE_NS, DEFAULT_TRUST_DOMAIN, DESTINATION_PORT

__all__ = ["ENV_PREFIX", "DestinationSettings", "SettingsError", "load_settings"]

ENV_PREFIX: Final = "MESHLET_DESTINATION_"
KUBERNETES: Final = "kubernetes"


class SettingsError(ValueError):
    """A setting that cannot be used; the message names it and says why."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DestinationSettings:
    # Where the HTTPS API listens: Linkerd's destination port, on every interface of the pod.
    listen_host: str = "0.0.0.0"  # noqa: S104 (a server in a pod listens on the pod's IPs)
    listen_port: int = DESTINATION_PORT
    # Serving certificate and key (PEM files, reloaded when they change on disk).
    tls_cert: Path
    tls_key: Path
    # "kubernetes" (in-cluster config, else $KUBECONFIG) or the path of a local YAML file.
    source: str = KUBERNETES
    cluster_domain: str = "cluster.local"
    control_plane_ns: str = DEFAULT_CONTROL_PLANE_NS
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    # seconds between keepalive lines on an idle stream: short enough that a client (or a
    # load balancer in between) notices a dead server well before its own idle timeout.
    keepalive_interval: float = 10.0
    # seconds between checks of the local YAML file (only with a file source).
    local_poll_interval: float = 1.0
    # Kubernetes watches: ask the API server to end each watch after this many seconds, and
    # treat a watch with no event or bookmark for watch_idle_timeout seconds as dead.
    watch_timeout: float = 300.0
    watch_idle_timeout: float = 330.0
    # Backoff after API errors, doubling from the first to the cap (seconds).
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    # Concurrent streams beyond this are refused with 503: every stream costs memory.
    max_streams: int = 20000
    log_level: str = "info"
    log_format: LogFormat = "plain"

    @property
    def local_file(self) -> Path | None:
        return None if self.source == KUBERNETES else Path(self.source)


_FLAGS: Final = {
    # flag/env suffix -> help
    "listen-addr": "host:port to listen on (default 0.0.0.0:8086)",
    "tls-cert-file": "serving certificate (PEM), reloaded when it changes",
    "tls-key-file": "serving key (PEM), reloaded when it changes",
    "source": "'kubernetes' or the path of a local YAML file of services and endpoints",
    "cluster-domain": "the cluster's DNS domain (default cluster.local)",
    "control-plane-ns": "the control plane's namespace (default meshlet)",
    "trust-domain": "the mesh's trust domain (default cluster.local)",
    "keepalive-interval": "keepalive line period on idle streams (default 10s)",
    "local-poll-interval": "how often the local YAML file is checked (default 1s)",
    "watch-timeout": "server-side timeout of each Kubernetes watch (default 5m)",
    "max-streams": "concurrent streams before 503 (default 20000)",
    "log-level": "trace, debug, info, warn or error (default info)",
    "log-format": "plain or json (default plain)",
}

_ALIASES: Final = {"tls-cert-file": "tls-cert", "tls-key-file": "tls-key"}
"""Earlier names, still accepted as flags and variables (``MESHLET_DESTINATION_TLS_CERT``); the
``*_FILE`` names match the other components' (``MESHLET_WEBHOOK_TLS_CERT_FILE``)."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meshlet-destination",
        description="Stream endpoints and service profiles to meshlet proxies (NDJSON over HTTPS).",
        epilog=(
            f"Every flag can also be set as {ENV_PREFIX}<FLAG> (e.g. {ENV_PREFIX}TLS_CERT_FILE)."
        ),
    )
    for flag, text in _FLAGS.items():
        alias = [f"--{_ALIASES[flag]}"] if flag in _ALIASES else []
        parser.add_argument(f"--{flag}", *alias, dest=flag.replace("-", "_"), help=text)
    parser.add_argument(
        "--self-signed",
        metavar="DIR",
        help="write a self-signed certificate for localhost into DIR and serve it (development)",
    )
    return parser


def _duration(name: str, text: str) -> float:
    try:
        value = parse_duration(text)
    except DurationError as error:
        raise SettingsError(f"{name}: {error}") from None
    if value <= 0:
        raise SettingsError(f"{name}: must be more than zero, got {text!r}")
    return value


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise SettingsError(f"listen-addr: expected host:port, got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104


def _fields(values: dict[str, str]) -> dict[str, object]:
    fields: dict[str, object] = {
        "tls_cert": Path(values["tls_cert_file"]),
        "tls_key": Path(values["tls_key_file"]),
    }
    if "listen_addr" in values:
        fields["listen_host"], fields["listen_port"] = _listen(values["listen_addr"])
    for key in ("source", "cluster_domain", "control_plane_ns", "trust_domain", "log_level"):
        if key in values:
            fields[key] = values[key].strip()
    for key in ("keepalive_interval", "local_poll_interval", "watch_timeout"):
        if key in values:
            fields[key] = _duration(key.replace("_", "-"), values[key])
    if "watch_timeout" in values:
        fields["watch_idle_timeout"] = _duration("watch-timeout", values["watch_timeout"]) + 30.0
    if "max_streams" in values:
        text = values["max_streams"]
        if not text.isdigit() or int(text) < 1:
            raise SettingsError(f"max-streams: expected a positive number, got {text!r}")
        fields["max_streams"] = int(text)
    if "log_format" in values:
        if values["log_format"] not in {"plain", "json"}:
            raise SettingsError(f"log-format: expected plain or json, got {values['log_format']!r}")
        fields["log_format"] = values["log_format"]
    return fields


def load_settings(
    argv: list[str], environ: Mapping[str, str]
) -> tuple[DestinationSettings, Path | None]:
    """Settings from flags and environment, and the ``--self-signed`` directory if given."""
    args = vars(_parser().parse_args(argv))
    values: dict[str, str] = {}
    for flag in _FLAGS:
        key = flag.replace("-", "_")
        env = environ.get(ENV_PREFIX + key.upper())
        if not env and flag in _ALIASES:
            env = environ.get(ENV_PREFIX + _ALIASES[flag].replace("-", "_").upper())
        if args.get(key) is not None:
            values[key] = args[key]
        elif env is not None and env != "":
            values[key] = env
    self_signed = Path(args["self_signed"]) if args.get("self_signed") else None
    if self_signed is not None:
        values.setdefault("tls_cert_file", str(self_signed / "tls.crt"))
        values.setdefault("tls_key_file", str(self_signed / "tls.key"))
    for required in ("tls_cert_file", "tls_key_file"):
        if required not in values:
            flag = required.replace("_", "-")
            raise SettingsError(
                f"--{flag} (or {ENV_PREFIX}{required.upper()}) is required "
                "(or --self-signed DIR for local development)"
            )
    fields = _fields(values)
    settings = DestinationSettings(**fields)  # type: ignore[arg-type]
    if settings.source != KUBERNETES and not settings.source:
        raise SettingsError("source: expected 'kubernetes' or a file path")
    return settings, self_signed
