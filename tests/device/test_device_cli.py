"""`autoprune device`: argument errors are one line, and binding anything but loopback prints the RPC warning."""

from __future__ import annotations

import pytest

from autoprune.cli import main
from autoprune.device import server as device_server
from autoprune.errors import ConfigError


def test_device_without_action_and_bad_flags_are_one_line(capsys):
    assert main(["device"]) == 2
    assert "autoprune device serve" in capsys.readouterr().err
    assert main(["device", "serve", "--tracker", "127.0.0.1:9190"]) == 2
    assert "--key" in capsys.readouterr().err
    assert main(["device", "serve", "--energy-sensor", "thermometer"]) == 2
    err = capsys.readouterr().err
    assert "unknown energy sensor" in err and err.count("\n") == 1
    assert main(["device", "info"]) == 2
    assert "--rpc HOST:PORT" in capsys.readouterr().err


@pytest.mark.parametrize(("host", "loopback"), [("127.0.0.1", True), ("localhost", True), ("::1", True),
                                                ("0.0.0.0", False), ("192.168.1.20", False), ("nano.lan", False)])
def test_is_loopback(host, loopback):
    assert device_server.is_loopback(host) is loopback


def test_binding_beyond_loopback_prints_the_rpc_warning(monkeypatch, capsys):
    import tvm.rpc.server as tvm_server

    def refuse(*args, **kwargs):  # never actually listen on a public address in a test
        raise OSError("not in tests")

    monkeypatch.setattr(tvm_server, "PopenRPCServerState", refuse)
    with pytest.raises(ConfigError, match=r"cannot listen on 192\.0\.2\.7"):
        device_server.serve("192.0.2.7", 9090, 9091, config=device_server.ServerConfig(energy_sensor="none"))
    err = capsys.readouterr().err
    assert "runs whatever a client sends it" in err and "192.0.2.7:9090" in err
    with pytest.raises(ConfigError):
        device_server.serve("127.0.0.1", 9090, 9091, config=device_server.ServerConfig(energy_sensor="none"))
    assert "WARNING" not in capsys.readouterr().err
