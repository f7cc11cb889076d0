"""A real ``autoprune device serve`` in a child process, on loopback, reading a fake INA3221 tree."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import PYTHON, ROOT, free_port

#: The fake board's input power, in milliwatts (the Nano's L4T 32 rail name).
TRUE_POWER_MW = 4750


def make_ina3221_tree(root: Path, rails: dict[str, int]) -> Path:
    """An L4T 32.x INA3221 sysfs tree (``rail_name_K`` + ``in_powerK_input`` in mW) under ``root``."""
    dev = root / "bus" / "i2c" / "drivers" / "ina3221x" / "6-0040" / "iio:device0"
    dev.mkdir(parents=True)
    for k, (name, mw) in enumerate(rails.items()):
        (dev / f"rail_name_{k}").write_text(f"{name}\n")
        (dev / f"in_power{k}_input").write_text(f"{mw}\n")
    return root


class DeviceServer:
    """``python -m autoprune device serve`` in its own process group (so a test can kill or stop it whole)."""

    def __init__(self, sysfs_root: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        port = free_port()
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "autoprune", "device", "serve", "--port", str(port), "--sysfs-root", str(sysfs_root),
             "--energy-min-time", "0.2", *extra],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})})
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()
        deadline = time.monotonic() + 60
        while True:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                self.kill()
                raise RuntimeError(f"device server did not start: {''.join(self.output)}") from None
            m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                break
            if self.proc.poll() is not None and self.lines.empty():
                raise RuntimeError(f"device server exited: {''.join(self.output)}")

    def _pump(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self.output.append(line)
            self.lines.put(line)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the server and its session processes (the group this test started)."""
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGKILL)
        self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def fake_board(tmp_path_factory) -> Path:
    return make_ina3221_tree(tmp_path_factory.mktemp("sys"), {"POM_5V_IN": TRUE_POWER_MW, "POM_5V_GPU": 1300})


@pytest.fixture(scope="module")
def device_server(fake_board):
    server = DeviceServer(fake_board)
    yield server
    server.kill()
