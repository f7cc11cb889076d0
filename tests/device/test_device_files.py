"""The device server's file functions stay in each session's folder: TVM's own ``upload``, ``download``,
``remove`` and ``load_module`` join the client's name onto it, so ``../x`` or ``/etc/x`` read and wrote anywhere
the server's user can. Checked against a real ``autoprune device serve`` on loopback."""

from __future__ import annotations

import os

import pytest

from autoprune.device.server import in_work_folder
from autoprune.errors import ConfigError
from tests.device.conftest import DeviceServer

REFUSED = "reads and writes files only inside its session folder"


@pytest.fixture
def session(device_server: DeviceServer):
    import tvm.rpc

    return tvm.rpc.connect("127.0.0.1", device_server.port, session_timeout=60)


def _names_outside(session, target: str) -> list[str]:
    """``target`` as an absolute path and relative to the session's folder (``../../...``)."""
    folder = os.path.dirname(session.get_function("tvm.rpc.server.workpath")("probe"))
    return [target, os.path.relpath(target, folder)]


def test_files_inside_the_session_folder_still_work(session):
    session.upload(bytearray(b"weights"), target="model.bin")
    assert bytes(session.download("model.bin")) == b"weights"
    session.upload(bytearray(b"nested"), target="second.bin")
    session.remove("model.bin")
    with pytest.raises(Exception):  # noqa: B017 - gone: TVM's own error
        session.download("model.bin")


def test_an_upload_cannot_write_outside(session, tmp_path):
    target = str(tmp_path / "planted.txt")
    for name in _names_outside(session, target):
        with pytest.raises(Exception, match=REFUSED):
            session.upload(bytearray(b"pwned"), target=name)
        assert not os.path.exists(target)


def test_a_download_cannot_read_outside(session, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("private")
    for name in _names_outside(session, str(secret)):
        with pytest.raises(Exception, match=REFUSED):
            session.download(name)


def test_remove_and_load_module_cannot_reach_outside(session, tmp_path):
    keep = tmp_path / "keep.txt"
    keep.write_text("mine")
    for name in _names_outside(session, str(keep)):
        with pytest.raises(Exception, match=REFUSED):
            session.remove(name)
        with pytest.raises(Exception, match=REFUSED):
            session.load_module(name)
    assert keep.read_text() == "mine"


def test_the_rule(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "link").symlink_to(tmp_path / "elsewhere")
    assert in_work_folder(str(tmp_path / "in"), "a.onnx") == str((tmp_path / "in" / "a.onnx").resolve())
    for name in ("../x", "/etc/passwd", "a/../../x", "link", ".", ""):
        with pytest.raises(ConfigError, match=REFUSED):
            in_work_folder(str(tmp_path / "in"), name)
