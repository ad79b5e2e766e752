"""When identity is on, from the proxy's settings (``load_mesh_tls``)."""

from __future__ import annotations

import pytest

from proxy.settings import ProxySettings, SettingsError
from proxy.tlsglue import MeshTls, load_mesh_tls
from tests.identity.conftest import PKI

from .conftest import WEB


def _load(extra: dict[str, str]) -> MeshTls:
    return load_mesh_tls(ProxySettings(extra=extra))


def test_identity_is_off_without_its_variables(pki: PKI) -> None:
    assert not _load({}).enabled
    assert _load({}).ready
    # Discovery reads the anchors too; they alone do not turn identity on.
    assert not _load({"IDENTITY_TRUST_ANCHORS": pki.anchors_file.read_text()}).enabled
    assert not _load({"IDENTITY_WAIT_TIMEOUT": "1s"}).enabled


def test_identity_is_on_and_not_ready_before_a_certificate(pki: PKI) -> None:
    mesh = _load(
        {"IDENTITY_TRUST_ANCHORS": pki.anchors_file.read_text(), "IDENTITY_LOCAL_NAME": WEB}
    )
    assert mesh.enabled
    assert mesh.local_name == WEB
    assert not mesh.ready


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"IDENTITY_LOCAL_NAME": WEB}, "MESHLET_PROXY_IDENTITY_TRUST_ANCHORS holds no PEM"),
        ({"IDENTITY_DIR": "/tmp/x", "IDENTITY_TRUST_ANCHORS": "{pem}"}, "LOCAL_NAME is required"),
        (
            {
                "IDENTITY_LOCAL_NAME": WEB,
                "IDENTITY_TRUST_ANCHORS": "{pem}",
                "IDENTITY_SVC_ADDR": "x",
            },
            "SVC_ADDR='x': expected host:port",
        ),
        ({"IDENTITY_WAIT_TIMEOUT": "soon"}, "MESHLET_PROXY_IDENTITY_WAIT_TIMEOUT"),
    ],
)
def test_bad_identity_settings_name_the_variable(
    pki: PKI, extra: dict[str, str], message: str
) -> None:
    pem = pki.anchors_file.read_text()
    with pytest.raises(SettingsError, match=message):
        _load({k: v.replace("{pem}", pem) for k, v in extra.items()})
