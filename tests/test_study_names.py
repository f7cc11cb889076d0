"""A study's name becomes the folder ``results/<study>/``: names that would lead out of it (``../x``, ``a/b``)
or hide it (``.x``) are one line and exit 2 before anything is stored, a new study and a resume alike."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import optuna
import pytest

from autoprune.errors import ConfigError
from autoprune.io import check_study_name, results_dir, study_dir
from tests.conftest import TINY_REF, cli_env

BAD = ["../x", "a/b", "/abs", ".hidden", "..", ".", "", "a b", "x" * 121, "naïve", "a\\b", "a\nb"]
ALLOWED = "use only letters, digits, '-', '_' and '.' (not first), at most 120 characters"


@pytest.mark.parametrize("name", ["demo", "a.b-c_1", "x" * 120, "_work_main_m.py_f-digits-jetson-nano-default"])
def test_plain_names_are_folders_under_results(name):
    assert check_study_name(name) == name and study_dir(name) == results_dir() / name


@pytest.mark.parametrize("name", BAD)
def test_other_names_are_refused_naming_the_rule(name):
    with pytest.raises(ConfigError) as err:
        study_dir(name)
    assert ALLOWED in str(err.value) and "\n" not in str(err.value).replace(repr(name), "")


def test_the_front_is_never_written_outside_results():
    from autoprune.search.report import write_front

    with pytest.raises(ConfigError, match="cannot be a folder under results/"):
        write_front(SimpleNamespace(study_name="../x"), None)


@pytest.mark.parametrize("name", ["../escaped", "a/b"])
def test_search_refuses_the_name_before_anything_is_stored(name, tmp_path, results_root):
    db = tmp_path / "s.db"
    proc = subprocess.run([sys.executable, "-m", "autoprune", "search", "--model", TINY_REF, "--target", "jetson-nano",
                           "--trials", "1", "--finetune-epochs", "0", "--no-progress", "--study", name,
                           "--storage", f"sqlite:///{db}"],
                          capture_output=True, text=True, env=cli_env(results_root), timeout=300)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and ALLOWED in lines[0], proc.stderr[-1500:]
    assert not db.exists()
    assert not (results_root.parent / "escaped").exists() and not (results_root / "a").exists()


def test_a_study_renamed_to_an_escaping_name_is_refused_on_resume(tmp_path, results_root, capsys):
    """The dashboard can rename a study (``../x`` included): resuming it must not write ``results/../x``."""
    from autoprune.cli import main
    from autoprune.search.config import CONFIG_ATTR, SearchConfig

    url = f"sqlite:///{tmp_path / 'r.db'}"
    study = optuna.create_study(study_name="../renamed", storage=url)  # what a rename leaves: a stored config
    study.set_user_attr(CONFIG_ATTR, SearchConfig(model=TINY_REF, target="jetson-nano", finetune_epochs=0).to_dict())
    assert main(["search", "--study", "../renamed", "--storage", url, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ALLOWED in err[0] and "'../renamed'" in err[0]
    assert main(["pareto", "--study", "../renamed", "--storage", url]) == 2
    assert "cannot be a folder under results/" in capsys.readouterr().err
    assert not (results_root.parent / "renamed").exists()
    assert optuna.load_study(study_name="../renamed", storage=url).get_trials() == []  # nothing stored
