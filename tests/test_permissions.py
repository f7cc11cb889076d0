"""A path autoprune cannot write (a read-only results folder or study database, an unwritable ``--out``, a full
disk) is one line naming it, exit 2, no traceback.

The tests really make the path unwritable for the command's process: as a normal user by ``chmod``; as root
(whom ``chmod`` does not stop) by a read-only bind mount, or a tiny tmpfs for a full disk, in a private mount
namespace of that one process (``unshare -m``), so nothing outside it sees the mount and nothing needs undoing;
as root without mount namespaces, by ``chmod`` with the process's capabilities to override it dropped (setpriv).
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from autoprune.io import write_failure
from tests.conftest import TINY_REF, cli_env

AUTOPRUNE = [sys.executable, "-m", "autoprune"]
#: Mounts ``$1..$N`` read-only (``ro``) or a ``SIZE`` tmpfs on ``$1`` (``full``), then runs the rest.
_MOUNT = r'''
mode=$1; n=$2; shift 2
i=0
while [ "$i" -lt "$n" ]; do
  if [ "$mode" = ro ]; then
    mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" "$1" || exit 97
  else
    mount -t tmpfs -o size=64k tmpfs "$1" || exit 97
  fi
  shift; i=$((i + 1))
done
exec "$@"
'''


def _namespaces_work() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", _MOUNT, "sh", "ro", "1",
                            "/tmp", "true"], capture_output=True)
    return probe.returncode == 0


#: Runs a command as root without the capabilities that let root ignore file modes.
_NO_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner"]


def _dropping_works() -> bool:
    return bool(shutil.which("setpriv")) and subprocess.run([*_NO_DAC, "true"], capture_output=True).returncode == 0


AS_ROOT = os.geteuid() == 0
NAMESPACES = _namespaces_work()
NO_DAC = AS_ROOT and not NAMESPACES and _dropping_works()
needs_a_way = pytest.mark.skipif(AS_ROOT and not (NAMESPACES or NO_DAC), reason="running as root without mount "
                                 "namespaces (unshare -m) or setpriv: nothing here can make a folder unwritable")


def run_unwritable(paths: list[Path], args: list[str], env: dict[str, str], mode: str = "ro"):
    """Run ``autoprune ARGS`` with ``paths`` read-only (``mode="ro"``) or on a 64 KiB file system (``"full"``)."""
    cmd = [*AUTOPRUNE, *args]
    if NAMESPACES:
        cmd = ["unshare", "-m", "--propagation", "private", "sh", "-c", _MOUNT, "sh", mode, str(len(paths)),
               *map(str, paths), *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    if mode == "full":
        pytest.skip("a full disk needs a tmpfs mount (root, in a private mount namespace)")
    if NO_DAC:
        cmd = [*_NO_DAC, *cmd]
    tree = [q for p in paths for q in (p, *p.rglob("*")) if not q.is_symlink()]  # as a mount would: all of it
    modes = {q: stat.S_IMODE(q.stat().st_mode) for q in tree}
    try:
        for q in reversed(tree):
            q.chmod(modes[q] & ~0o222)
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    finally:
        for q in tree:
            q.chmod(modes[q])


def denied(path) -> tuple[str, str]:
    """Either line for ``path``: read-only (root, a mount) or permission denied (a user, ``chmod``)."""
    return f"cannot write {path}", f"cannot access {path}"


def one_line(proc, *needles: str | tuple[str, ...]) -> str:
    """The command's only stderr line, with exit 2 and no traceback; each needle (or one of a tuple) in it."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr[-2000:]
    for needle in needles:
        assert any(n in lines[0] for n in ((needle,) if isinstance(needle, str) else needle)), lines[0]
    print(lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def study(tmp_path_factory, results_root, tiny_dense):
    """A one-trial study ``ro`` with its database in its own folder, and a copy of the results folder."""
    from autoprune.cli import main

    folder = tmp_path_factory.mktemp("ro")
    results = folder / "results"
    shutil.copytree(results_root / "checkpoints", results / "checkpoints")
    url = f"sqlite:///{folder / 'db' / 'ro.db'}"
    env = cli_env(results)
    old = os.environ.get("AUTOPRUNE_RESULTS")
    os.environ["AUTOPRUNE_RESULTS"] = str(results)
    try:
        assert main(["search", "--model", TINY_REF, "--target", "jetson-nano", "--finetune-epochs", "0", "--trials",
                     "1", "--no-progress", "--study", "ro", "--storage", url]) == 0
    finally:
        os.environ["AUTOPRUNE_RESULTS"] = old or str(results_root)
    return {"results": results, "url": url, "db": folder / "db" / "ro.db", "env": env, "folder": folder}


@needs_a_way
def test_search_with_a_read_only_results_folder(study):
    proc = run_unwritable([study["results"]], ["search", "--study", "ro", "--storage", study["url"], "--trials", "1",
                                               "--no-progress"], study["env"])
    one_line(proc, denied(study['results']), "set AUTOPRUNE_RESULTS=DIR")


@needs_a_way
def test_search_with_a_read_only_study_database(study):
    proc = run_unwritable([study["db"].parent], ["search", "--study", "ro", "--storage", study["url"], "--trials",
                                                 "1", "--no-progress"], study["env"])
    one_line(proc, f"cannot write the study database {study['db']}: ",
             "; make it and its folder writable for this user, or pass --storage URL")


@needs_a_way
def test_pareto_with_a_read_only_results_folder(study):
    proc = run_unwritable([study["results"]], ["pareto", "--study", "ro", "--storage", study["url"]], study["env"])
    one_line(proc, denied(study['results'] / 'ro' / 'pareto.csv'), "set AUTOPRUNE_RESULTS=DIR")


@needs_a_way
def test_export_to_an_unwritable_out_folder(study):
    out = study["folder"] / "locked"
    out.mkdir()
    proc = run_unwritable([out], ["export", "--study", "ro", "--storage", study["url"], "--trial", "0",
                                  "--out", str(out / "e"), "--epochs", "0", "--no-tvm", "--no-progress"], study["env"])
    one_line(proc, denied(out / 'e'), "pass --out DIR")


@needs_a_way
def test_export_with_a_read_only_results_folder(study):
    proc = run_unwritable([study["results"]], ["export", "--study", "ro", "--storage", study["url"], "--trial", "0",
                                               "--epochs", "0", "--no-tvm", "--no-progress"], study["env"])
    one_line(proc, ("cannot write", "cannot access"), str(study["results"]), "pass --out DIR")


@needs_a_way
def test_train_refuses_an_unwritable_checkpoint_folder_before_training(study):
    proc = run_unwritable([study["results"]], ["train", "--model", "vgg", "--epochs", "50", "--no-progress"],
                          study["env"])
    one_line(proc, denied(study['results'] / 'checkpoints'), "set AUTOPRUNE_RESULTS=DIR")


@pytest.mark.skipif(not NAMESPACES, reason="a full disk is a 64 KiB tmpfs: needs root and mount namespaces")
def test_pareto_on_a_full_disk(study, tmp_path):
    results = tmp_path / "small"
    results.mkdir()
    proc = run_unwritable([results], ["pareto", "--study", "ro", "--storage", study["url"]],
                          {**study["env"], "AUTOPRUNE_RESULTS": str(results)}, mode="full")
    one_line(proc, denied(results / 'ro'), "no space left on device; free some space")
    assert not list(results.glob("**/*.tmp")) and not list(results.glob("**/.*.tmp"))


def test_the_translator_reads_os_and_sqlite_errors():
    for code, what in ((errno.EACCES, "access /r/x.json: permission denied"),
                       (errno.EPERM, "access /r/x.json: operation not permitted"),
                       (errno.EROFS, "write /r/x.json: read-only file system; make it writable"),
                       (errno.ENOSPC, "write /r/x.json: no space left on device; free some space"),
                       (errno.EDQUOT, "write /r/x.json: disk quota exceeded; free some space")):
        line = write_failure(OSError(code, os.strerror(code), "/r/x.json"), elsewhere="pass --out DIR")
        assert line.startswith(f"cannot {what}") and line.endswith(", or pass --out DIR"), line
    assert write_failure(PermissionError(errno.EACCES, "Permission denied", "/r")).startswith(
        "cannot access /r: permission denied; make it readable and writable for this user")
    assert write_failure(OSError(errno.ENOENT, "No such file", "/r")) is None
    assert write_failure(ValueError("attempt to write a readonly database")) is None

    import optuna
    from sqlalchemy.exc import OperationalError

    for text, what in (("attempt to write a readonly database", "read-only database"),
                       ("unable to open database file", "cannot be opened or created"),
                       ("database or disk is full", "no space left on device")):
        try:
            try:
                raise OperationalError("UPDATE x", {}, sqlite3.OperationalError(text))
            except OperationalError as exc:
                raise optuna.exceptions.StorageInternalError("An exception is raised during the commit.") from exc
        except optuna.exceptions.StorageInternalError as exc:
            assert write_failure(exc, database="/r/autoprune.db").startswith(
                f"cannot write the study database /r/autoprune.db: {what}; ")


def test_atomic_writes_name_the_file_not_their_temporary(tmp_path, monkeypatch):
    from autoprune import io

    def refuse(*_a, **_k):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / ".pareto.csv.x1y2.tmp"))

    monkeypatch.setattr(io.tempfile, "mkstemp", refuse)
    with pytest.raises(OSError) as err:
        io.atomic_write_text(tmp_path / "pareto.csv", "x")
    assert err.value.errno == errno.EROFS and err.value.filename == str(tmp_path / "pareto.csv")
