"""A serving certificate and key that cannot be loaded: the error names the file and says why
(OpenSSL itself says only "PEM lib" for either file). Every control-plane server loads its files
through ``ReloadingServerTLS``, so this is the sentence their start-up error carries."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from meshlet.devcert import write_self_signed
from meshlet.tlsserve import ReloadingServerTLS, TLSFilesError


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("tls")
    write_self_signed(tmp / "a", ["localhost"])
    write_self_signed(tmp / "b", ["localhost"])
    (tmp / "binary").write_bytes(os.urandom(256))
    (tmp / "empty").write_bytes(b"")
    (tmp / "dir").mkdir()
    return tmp


@pytest.mark.parametrize(
    ("cert", "key", "expected"),
    [
        pytest.param("a/tls.crt", "b/tls.key", "the key does not belong", id="mismatch"),
        pytest.param("binary", "a/tls.key", "binary holds no PEM certificate", id="cert-binary"),
        pytest.param("a/tls.key", "a/tls.key", "holds no PEM certificate", id="key-as-cert"),
        pytest.param("a/tls.crt", "empty", "empty holds no PEM private key", id="key-empty"),
        pytest.param("a/tls.crt", "a/tls.crt", "holds no PEM private key", id="cert-as-key"),
        pytest.param("missing", "a/tls.key", "cannot read the certificate", id="cert-missing"),
        pytest.param("a/tls.crt", "dir", "cannot read the private key", id="key-directory"),
    ],
)
def test_unloadable_files_are_named(files: Path, cert: str, key: str, expected: str) -> None:
    with pytest.raises(TLSFilesError) as raised:
        ReloadingServerTLS(files / cert, files / key)
    message = str(raised.value)
    assert expected in message
    assert "\n" not in message


def test_good_pair_loads(files: Path) -> None:
    ReloadingServerTLS(files / "a" / "tls.crt", files / "a" / "tls.key")
