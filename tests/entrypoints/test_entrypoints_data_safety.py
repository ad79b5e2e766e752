"""Commands that write files never destroy what is there, and never leave half an output.

``meshlet install-files DIR`` writes keys: without ``--force`` it refuses, before writing
anything, when any of its files exists, wherever it is in the tree (a re-run must not replace the
trust anchor's key the cluster trusts). ``meshlet inject`` writes YAML to stdout only once every
input parsed, so a broken file in the list leaves stdout empty (the tables in
test_entrypoints_bad_input.py check that for each kind of bad input; here a pipeline's view).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from meshlet import install
from tests.entrypoints.entrypoint_run import BIN

ALL_FILES = [
    "ca-bundle.crt",
    "ca.key",
    "crt.pem",
    "key.pem",
    "kustomization.yaml",
    "destination/tls.crt",
    "destination/tls.key",
    "webhook/tls.crt",
    "webhook/tls.key",
]


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(directory)): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def test_install_files_writes_every_file(tmp_path: Path) -> None:
    assert install.main([str(tmp_path / "secrets")]) == 0
    assert sorted(_snapshot(tmp_path / "secrets")) == sorted(ALL_FILES)


@pytest.mark.parametrize("existing", ["ca.key", "destination/tls.key", "webhook/tls.crt"])
def test_install_files_never_overwrites_without_force(
    tmp_path: Path, existing: str, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "secrets"
    (directory / existing).parent.mkdir(parents=True)
    (directory / existing).write_bytes(b"the operator's own file\n")
    assert install.main([str(directory)]) == 1
    err = capsys.readouterr().err
    assert existing in err
    assert "--force" in err
    assert "nothing was written" in err
    assert _snapshot(directory) == {existing: b"the operator's own file\n"}


def test_install_files_force_replaces_everything(tmp_path: Path) -> None:
    directory = tmp_path / "secrets"
    assert install.main([str(directory)]) == 0
    before = _snapshot(directory)
    assert install.main([str(directory), "--force"]) == 0
    after = _snapshot(directory)
    assert sorted(after) == sorted(ALL_FILES)
    assert all(after[name] != before[name] for name in ("ca.key", "webhook/tls.key"))


def test_inject_writes_nothing_when_a_later_input_is_broken(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n"
                    "spec: {containers: [{name: c, image: i}]}\n")  # fmt: skip
    broken = tmp_path / "broken.yaml"
    broken.write_text("kind: Pod\nspec: [\n")
    out = tmp_path / "out.yaml"
    with out.open("wb") as sink:
        done = subprocess.run(  # the shell's `meshlet inject good broken > out.yaml`
            [str(BIN / "meshlet"), "inject", str(good), str(broken)],
            stdout=sink,
            stderr=subprocess.PIPE,
            check=False,
        )
    assert done.returncode == 2
    assert b"broken.yaml" in done.stderr
    assert out.read_bytes() == b""


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["meshlet", "inject", "{many}"], id="inject"),
        pytest.param(["meshlet-proxy-init", "--dry-run"], id="proxy-init"),
    ],
)
def test_output_reader_gone_stops_quietly(argv: list[str], tmp_path: Path) -> None:
    """``... | head -1``: the reader closes the pipe; the command stops, without a traceback."""
    many = tmp_path / "many.yaml"
    pod = "kind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, image: i}]}\n"
    many.write_text("---\n".join([pod] * 2000))
    command = [str(BIN / argv[0]), *(part.format(many=many) for part in argv[1:])]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
        assert process.stdout is not None
        process.stdout.close()  # the reader is gone before the first write
        _, err = process.communicate(timeout=60)
    assert b"Traceback" not in err, err.decode()
    assert b"Exception ignored" not in err, err.decode()
    assert process.returncode == 0
