"""The identity service's settings: one frozen object, read from ``MESHLET_IDENTITY_*``.

Every variable can also be given as a flag of ``meshlet-identity`` (``--leaf-lifetime 1h``); the
flag wins. Durations use meshlet/durations.py (``20s``, ``24h``).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from meshlet.durations import DurationError, parse_duration
from meshlet.names import DEFAULT_CONTROL_PLANE_NS, DEFAULT_TRUST_DOMAIN, IDENTITY_PORT

__all__ = ["IdentitySettings", "SettingsError", "load_settings"]


class SettingsError(ValueError):
    """A bad variable or flag; the message names it and the value."""


@dataclass(frozen=True, slots=True, kw_only=True)
class IdentitySettings:
    # Where to listen; 0.0.0.0 because proxies on every node connect to the Service.
    listen_host: str = "0.0.0.0"  # noqa: S104
    listen_port: int = IDENTITY_PORT
    # The issuer Secret (Linkerd's key names crt.pem/key.pem) and the trust-anchor bundle.
    issuer_cert_file: Path = Path("/var/run/meshlet/identity/issuer/crt.pem")
    issuer_key_file: Path = Path("/var/run/meshlet/identity/issuer/key.pem")
    trust_anchors_file: Path = Path("/var/run/meshlet/identity/trust-anchors/ca-bundle.crt")
    control_plane_ns: str = DEFAULT_CONTROL_PLANE_NS
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    # Seconds. 24 h leaves renewed at 70% (Linkerd's defaults): a stolen key is useful for a day.
    leaf_lifetime: float = 24 * 3600.0
    # Seconds of backdating (and extra validity) so peers with slow clocks accept new leaves.
    clock_skew: float = 20.0
    # "kubernetes" (TokenReview) or the path of a development-only static token file.
    token_source: str = "kubernetes"  # noqa: S105 (a source name, not a secret)
    # Seconds between checks of the issuer files (a Secret update lands within ~a minute anyway).
    reload_interval: float = 5.0
    # Seconds a TokenReview may take before the request is refused as unavailable.
    token_review_timeout: float = 5.0
    # Bytes: a request is an identity, a CSR (<= 16 KiB) and JSON punctuation.
    max_body_bytes: int = 64 * 1024
    log_level: str = "info"
    log_format: str = "plain"

    @property
    def token_file(self) -> Path | None:
        kubernetes = self.token_source == "kubernetes"  # noqa: S105
        return None if kubernetes else Path(self.token_source)


# field -> (variable suffix after MESHLET_IDENTITY_, and flag --suffix-in-kebab-case; kind)
_FIELDS: dict[str, tuple[str, str]] = {
    "listen": ("LISTEN_ADDR", "addr"),
    "issuer_cert_file": ("ISSUER_CERT_FILE", "path"),
    "issuer_key_file": ("ISSUER_KEY_FILE", "path"),
    "trust_anchors_file": ("TRUST_ANCHORS_FILE", "path"),
    "control_plane_ns": ("CONTROL_PLANE_NS", "str"),
    "trust_domain": ("TRUST_DOMAIN", "str"),
    "leaf_lifetime": ("LEAF_LIFETIME", "duration"),
    "clock_skew": ("CLOCK_SKEW", "duration"),
    "token_source": ("TOKEN_SOURCE", "str"),
    "reload_interval": ("RELOAD_INTERVAL", "duration"),
    "token_review_timeout": ("TOKEN_REVIEW_TIMEOUT", "duration"),
    "max_body_bytes": ("MAX_BODY_BYTES", "int"),
    "log_level": ("LOG_LEVEL", "str"),
    "log_format": ("LOG_FORMAT", "str"),
}
_PREFIX = "MESHLET_IDENTITY_"
_MAX_DURATION = 100 * 365 * 86400.0  # longer overflows certificate dates
_LOG_LEVELS = ("trace", "debug", "info", "warn", "warning", "error")


def _parse_addr(text: str, name: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SettingsError(f"{name}={text!r}: expected host:port, e.g. 0.0.0.0:8080")
    return host.strip("[]"), int(port)


def _convert(field: str, kind: str, text: str, name: str) -> object:
    if kind == "path":
        return Path(text)
    if kind == "duration":
        try:
            value = parse_duration(text)
        except DurationError as error:
            raise SettingsError(f"{name}: {error}") from None
        if value <= 0 and field != "clock_skew":
            raise SettingsError(f"{name}={text!r}: must be more than zero")
        if value > _MAX_DURATION:
            raise SettingsError(f"{name}={text!r}: longer than 100 years")
        return value
    if kind == "int":
        if not text.isdigit() or int(text) <= 0:
            raise SettingsError(f"{name}={text!r}: expected a positive whole number")
        return int(text)
    if not text:
        raise SettingsError(f"{name} is empty")
    if field == "log_level" and text.lower() not in _LOG_LEVELS:
        raise SettingsError(f"{name}={text!r}: expected one of {', '.join(_LOG_LEVELS)}")
    if field == "log_format" and text not in ("plain", "json"):
        raise SettingsError(f"{name}={text!r}: expected plain or json")
    return text


def load_settings(argv: list[str], environ: Mapping[str, str]) -> IdentitySettings:
    """Settings from the environment, overridden by flags (``--leaf-lifetime 1h``)."""
    parser = argparse.ArgumentParser(
        prog="meshlet-identity",
        description="The meshlet identity service (the mesh's certificate authority).",
        epilog="Every flag can also be set as MESHLET_IDENTITY_<FLAG> (e.g. _LEAF_LIFETIME=1h).",
    )
    for field, (suffix, _) in _FIELDS.items():
        flag = "--" + suffix.lower().replace("_", "-")
        parser.add_argument(flag, dest=field, metavar=suffix, help=f"env {_PREFIX}{suffix}")
    parsed = parser.parse_args(argv)
    values: dict[str, object] = {}
    for field, (suffix, kind) in _FIELDS.items():
        flag_value = getattr(parsed, field)
        name = f"--{suffix.lower().replace('_', '-')}" if flag_value else f"{_PREFIX}{suffix}"
        text = flag_value if flag_value is not None else environ.get(_PREFIX + suffix)
        if text is None:
            continue
        if kind == "addr":
            values["listen_host"], values["listen_port"] = _parse_addr(text, name)
        else:
            values[field] = _convert(field, kind, text, name)
    return IdentitySettings(**values)  # type: ignore[arg-type]
