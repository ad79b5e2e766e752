"""The proxy's identity client (Trio): obtain a certificate, keep it fresh, hand out TLS contexts.

Theory of operation: ``IdentityClient.run`` makes one ECDSA P-256 key in memory and a CSR for
``local_name`` (in a short-lived worker process, ``proxy/identity/keywork.py``, so the proxy
never loads ``cryptography``), then loops forever: read the token file (fresh each time, kubelet
rotates it), ``POST /v1/certify`` over HTTPS to the identity service (verified against the trust
anchors under the service's own identity), check the answer (in the worker too), write key and
chain into the memory-backed identity directory (Python's ssl loads files only), build new server
and client contexts, set ``ready``, and sleep until 70% of the remaining lifetime. Every failure
is logged (never the token) and retried with jittered exponential backoff; a certificate already
held keeps serving meanwhile.
"""

from __future__ import annotations

import datetime
import logging
import os
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import trio

from proxy.identity.keywork import (
    KeyMaterial,
    KeyWork,
    accept_in_worker,
    keygen_in_worker,
    run_keywork,
)
from proxy.identity.protocol import (
    Certified,
    CertifyExchange,
    IdentityClientError,
    TransportError,
    refresh_delay,
)
from proxy.identity.settings import IdentityClientSettings
from proxy.identity.tls import client_context, server_context

__all__ = ["IdentityClient", "NotReadyError", "Transport", "https_transport"]

log = logging.getLogger("meshlet.proxy.identity")

# One certify exchange: (settings, csr_pem, token) -> (status, body).
Transport = Callable[[IdentityClientSettings, str, str], Awaitable[tuple[int, bytes]]]


class NotReadyError(RuntimeError):
    """No certificate yet: the proxy must not accept or make meshed connections."""


@dataclass(frozen=True, slots=True)
class _Contexts:
    certified: Certified
    server: ssl.SSLContext
    client: ssl.SSLContext


def _service_context(settings: IdentityClientSettings) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=settings.trust_anchors_pem)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


async def https_transport(
    settings: IdentityClientSettings, csr_pem: str, token: str
) -> tuple[int, bytes]:
    """One exchange with the identity service over a fresh verified TLS connection."""
    exchange = CertifyExchange(
        host=settings.svc_name,
        identity=settings.local_name,
        csr_pem=csr_pem,
        token=token,
        max_body=settings.max_response_bytes,
    )
    try:
        with trio.fail_after(settings.request_timeout):
            tcp = await trio.open_tcp_stream(settings.svc_host, settings.svc_port)
            stream = trio.SSLStream(
                tcp,
                _service_context(settings),
                server_hostname=settings.svc_name,
                https_compatible=True,
            )
            try:
                await stream.send_all(exchange.request_bytes())
                while True:
                    answer = exchange.receive_data(bytes(await stream.receive_some(65536)))
                    if answer is not None:
                        return answer
            finally:
                await trio.aclose_forcefully(stream)
    except trio.TooSlowError:
        raise TransportError(f"no answer within {settings.request_timeout:g}s") from None
    except (OSError, trio.BrokenResourceError, ssl.SSLError) as error:
        cause = error.__cause__ or error
        raise TransportError(f"{type(cause).__name__}: {cause}") from None


class IdentityClient:
    """Holds this proxy's certificate and the TLS contexts made from it."""

    def __init__(
        self,
        settings: IdentityClientSettings,
        *,
        transport: Transport = https_transport,
        wall_clock: Callable[[], float] = time.time,
        alpn_protocols: Sequence[str] = (),
        keywork: KeyWork = run_keywork,
    ) -> None:
        """``alpn_protocols`` (e.g. ``["h2", "http/1.1"]``) is set on every context built;
        ``keywork`` runs the key and certificate checks (a worker process by default)."""
        self._keywork = keywork
        self.settings = settings
        self.ready = trio.Event()
        self.renewals = 0
        self.failures = 0
        self._transport = transport
        self._wall_clock = wall_clock
        self._key: KeyMaterial | None = None
        self._current: _Contexts | None = None
        self._tap: tuple[_Contexts, ssl.SSLContext] | None = None
        self._alpn = list(alpn_protocols)

    # -- what the proxy uses ------------------------------------------------------------------

    @property
    def is_ready(self) -> bool:
        return self._current is not None

    @property
    def certificate(self) -> Certified:
        return self._get().certified

    @property
    def server_context(self) -> ssl.SSLContext:
        """For accepting meshed connections (client certificate required)."""
        return self._get().server

    @property
    def client_context(self) -> ssl.SSLContext:
        """For meshed connections out; wrap with ``server_hostname=<peer identity>``."""
        return self._get().client

    def tap_server_context(self) -> ssl.SSLContext | None:
        """For the tap listener (``proxy/tapserver.py``): our certificate, a client certificate
        verified when sent but optional (a client without one is judged by its address).
        Built on first use after each renewal; ``None`` before the first certificate."""
        current = self._current
        if current is None:
            return None
        if self._tap is None or self._tap[0] is not current:
            directory = self.settings.identity_dir
            context = server_context(
                self.settings.trust_anchors_pem, directory / "crt.pem", directory / "key.p8"
            )
            context.verify_mode = ssl.CERT_OPTIONAL
            context.num_tickets = 0
            self._tap = (current, context)
        return self._tap[1]

    def _get(self) -> _Contexts:
        if self._current is None:
            raise NotReadyError(f"no certificate for {self.settings.local_name} yet")
        return self._current

    # -- the loop -----------------------------------------------------------------------------

    def _now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self._wall_clock(), datetime.UTC)

    def _read_token(self) -> str:
        try:
            token = self.settings.token_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as error:
            raise IdentityClientError(
                f"cannot read token file {self.settings.token_file}: {error}"
            ) from None
        if not token:
            raise IdentityClientError(f"token file {self.settings.token_file} is empty")
        return token

    async def certify_once(self) -> Certified:
        """One attempt; raises ``IdentityClientError`` (all of which are worth retrying)."""
        if self._key is None:  # once per process: the key lives as long as the proxy
            self._key = await keygen_in_worker(self.settings.local_name, run=self._keywork)
        key = self._key
        status, body = await self._transport(self.settings, key.csr_pem, self._read_token())
        certified = await accept_in_worker(
            status,
            body,
            key=key,
            identity=self.settings.local_name,
            anchors_pem=self.settings.trust_anchors_pem,
            run=self._keywork,
        )
        self._install(key, certified)
        return certified

    def _install(self, key: KeyMaterial, certified: Certified) -> None:
        directory = self.settings.identity_dir
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            key_file, cert_file = directory / "key.p8", directory / "crt.pem"
            _write(key_file, key.key_pem, 0o600)
            _write(cert_file, certified.chain_pem(), 0o644)
            anchors = self.settings.trust_anchors_pem
            server = server_context(anchors, cert_file, key_file)
            client = client_context(anchors, cert_file, key_file)
            if self._alpn:
                server.set_alpn_protocols(self._alpn)
                client.set_alpn_protocols(self._alpn)
        except (OSError, ssl.SSLError) as error:
            raise IdentityClientError(f"cannot use the new certificate: {error}") from None
        self._current = _Contexts(certified=certified, server=server, client=client)
        self.renewals += 1
        self.ready.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Certify, then renew forever; ``started`` at once (wait on ``ready`` for the cert)."""
        task_status.started()
        settings = self.settings
        backoff = settings.backoff_min
        while True:
            try:
                certified = await self.certify_once()
            except IdentityClientError as error:
                self.failures += 1
                delay = random.uniform(backoff / 2, backoff)  # noqa: S311 (jitter, not crypto)
                log.warning("certify failed (%s); retrying in %.1fs", error, delay)
                backoff = min(backoff * 2, settings.backoff_max)
                await trio.sleep(delay)
                continue
            backoff = settings.backoff_min
            delay = refresh_delay(
                now=self._now(),
                valid_until=certified.valid_until,
                fraction=settings.refresh_fraction,
                minimum=settings.min_refresh,
                maximum=settings.max_refresh,
            )
            log.info(
                "certified as %s until %s; renewing in %.0fs",
                settings.local_name,
                certified.valid_until.isoformat(),
                delay,
            )
            await trio.sleep(delay)


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)
