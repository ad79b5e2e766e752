"""The identity client's cryptography, done in a short-lived child process.

``cryptography`` costs a proxy about 11 MB of RSS for its whole life (its Rust extension and the
Python modules around it), yet the proxy needs it only twice per certificate: to make its key and
CSR at start, and to check each answer of the identity service (every ~17 hours). So the proxy
never imports it: ``run_keywork`` starts ``python -m proxy.identity.keywork``, which reads one
JSON request on stdin, answers one JSON object on stdout and exits (about 0.3 s of CPU).
TLS itself is the ``ssl`` module's, which the proxy loads anyway.

Requests (``op``):

- ``keygen`` ``{identity}`` → ``{key_pem, public_pem, csr_pem}``: a fresh ECDSA P-256 key, its
  public half and a CSR whose only SAN is ``identity``. The private key travels through the
  pipe once, to the parent that keeps it (memory, then the memory-backed identity directory).
- ``accept`` ``{status, body, public_pem, identity, anchors_pem}`` → ``{pem, valid_until}``, or
  ``{error: "refused"|"invalid", ...}``: ``proxy.identity.protocol.accept_answer``. Only the
  public key is sent.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import trio

from proxy.identity.protocol import (
    Certified,
    CertifyRefused,
    IdentityClientError,
    InvalidAnswer,
    accept_answer,
    build_csr,
)

__all__ = [
    "KeyMaterial",
    "KeyWork",
    "accept_in_worker",
    "keygen_in_worker",
    "run_in_process",
    "run_keywork",
]

_TIMEOUT: Final = 30.0  # seconds for a worker: a cold Python start on a busy node
_MAX_OUTPUT: Final = 1 << 20


class KeyMaterial:
    """The proxy's key (PEM, never logged) and what is derived from it."""

    __slots__ = ("csr_pem", "key_pem", "public_pem")

    def __init__(self, key_pem: bytes, public_pem: str, csr_pem: str) -> None:
        self.key_pem = key_pem
        self.public_pem = public_pem
        self.csr_pem = csr_pem

    def __repr__(self) -> str:
        return "KeyMaterial(<secret>)"


KeyWork = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
"""Runs one request: ``run_keywork`` (a worker process, the proxy's) or ``run_in_process``."""


async def run_in_process(request: dict[str, Any]) -> dict[str, Any]:
    """The same, in this process (loads ``cryptography`` here): for tests on a fake clock, where
    waiting for a process would let the clock jump, and for tools."""
    return _handle(request)


def _worker_command() -> tuple[list[str], dict[str, str]]:
    """This interpreter, with this process's import path (the worker must import exactly what
    the proxy does). ``/proc/self/exe`` when the interpreter's path is not reachable by the
    proxy's user (a development checkout under a private home), in which case the import path
    is what tells the worker where the packages are."""
    executable = sys.executable
    if not executable or not os.access(executable, os.X_OK):
        executable = "/proc/self/exe"
    root = str(Path(__file__).resolve().parents[2])  # where the ``proxy`` package lives
    path = os.pathsep.join([root, *(entry for entry in sys.path if entry)])
    return [executable, "-m", "proxy.identity.keywork"], {**os.environ, "PYTHONPATH": path}


async def run_keywork(request: dict[str, Any], *, timeout: float = _TIMEOUT) -> dict[str, Any]:
    """One request to a fresh worker; ``IdentityClientError`` if it fails (retried)."""
    data = json.dumps(request).encode()
    argv, env = _worker_command()
    try:
        with trio.fail_after(timeout):
            done = await trio.run_process(
                argv,
                env=env,
                stdin=data,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
    except trio.TooSlowError:
        raise IdentityClientError(f"the key worker took longer than {timeout:g}s") from None
    except OSError as exc:
        raise IdentityClientError(f"cannot start the key worker: {exc}") from None
    if done.returncode != 0:
        last = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
        raise IdentityClientError(f"the key worker failed ({done.returncode}): {last[0]}")
    try:
        answer = json.loads(done.stdout[:_MAX_OUTPUT])
    except ValueError:
        raise IdentityClientError("the key worker answered something that is not JSON") from None
    if not isinstance(answer, dict):
        raise IdentityClientError("the key worker answered something that is not an object")
    return answer


async def keygen_in_worker(identity: str, *, run: KeyWork = run_keywork) -> KeyMaterial:
    answer = await run({"op": "keygen", "identity": identity})
    try:
        return KeyMaterial(
            answer["key_pem"].encode(), str(answer["public_pem"]), str(answer["csr_pem"])
        )
    except (KeyError, AttributeError) as exc:
        raise IdentityClientError(f"the key worker's answer lacks {exc}") from None


async def accept_in_worker(
    status: int,
    body: bytes,
    *,
    key: KeyMaterial,
    identity: str,
    anchors_pem: str,
    run: KeyWork = run_keywork,
) -> Certified:
    """``accept_answer`` in the worker: ``CertifyRefused``/``InvalidAnswer`` as it raises them."""
    answer = await run(
        {
            "op": "accept",
            "status": status,
            "body": base64.b64encode(body).decode(),
            "public_pem": key.public_pem,
            "identity": identity,
            "anchors_pem": anchors_pem,
        }
    )
    error = answer.get("error")
    if error == "refused":
        raise CertifyRefused(
            int(answer.get("status", 0)), str(answer.get("reason")), str(answer.get("message"))
        )
    if error is not None:
        raise InvalidAnswer(str(answer.get("message", "the answer was refused")))
    try:
        valid_until = datetime.datetime.fromisoformat(answer["valid_until"])
        return Certified(pem=answer["pem"].encode(), valid_until=valid_until)
    except (KeyError, AttributeError, TypeError, ValueError) as exc:
        raise IdentityClientError(f"the key worker's answer is malformed: {exc}") from None


def _handle(request: dict[str, Any]) -> dict[str, Any]:
    from cryptography import x509  # noqa: PLC0415 (only ever in the worker)
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415

    if request["op"] == "keygen":
        key = ec.generate_private_key(ec.SECP256R1())
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        public_pem = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return {
            "key_pem": key_pem.decode(),
            "public_pem": public_pem.decode(),
            "csr_pem": build_csr(key, request["identity"]),
        }
    public = serialization.load_pem_public_key(request["public_pem"].encode())
    if not isinstance(public, ec.EllipticCurvePublicKey):
        return {"error": "invalid", "message": "not an EC key"}
    try:
        anchors = x509.load_pem_x509_certificates(request["anchors_pem"].encode())
    except ValueError:
        anchors = []  # nothing chains to them: the answer is refused as untrusted
    try:
        certified = accept_answer(
            int(request["status"]),
            base64.b64decode(request["body"]),
            key=public,
            identity=request["identity"],
            anchors=anchors,
        )
    except CertifyRefused as exc:
        return {"error": "refused", "status": exc.status, "reason": exc.reason,
                "message": exc.message}  # fmt: skip
    except InvalidAnswer as exc:
        return {"error": "invalid", "message": str(exc)}
    return {"pem": certified.pem.decode(), "valid_until": certified.valid_until.isoformat()}


def main() -> int:
    request = json.loads(sys.stdin.buffer.read(_MAX_OUTPUT))
    json.dump(_handle(request), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
