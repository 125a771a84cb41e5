"""`--profile NAME` (the profiles folder, CONADV_PROFILES) and `--profile PATH` (any .toml file)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conadv_repro.errors import UserError
from conadv_repro.launch.profiles import PROFILES_ENV, Profile, load_profile

MINE = 'partition = "gpu"\ngpus_per_node = 4\nconstraint = "h100"\n'


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "cluster.toml").write_text('partition = "folder"\n')
    monkeypatch.setenv(PROFILES_ENV, str(profiles))
    return profiles


def test_a_name_reads_the_profiles_folder(folder):
    assert load_profile("cluster") == Profile(name="cluster", partition="folder")
    assert load_profile(None) == Profile()


@pytest.mark.parametrize("relative", [True, False])
def test_a_path_reads_that_file_named_after_its_stem(folder, tmp_path, monkeypatch, relative):
    path = tmp_path / "elsewhere" / "mine.toml"
    path.parent.mkdir()
    path.write_text(MINE)
    monkeypatch.chdir(tmp_path)
    profile = load_profile("elsewhere/mine.toml" if relative else str(path))
    assert profile == Profile(name="mine", partition="gpu", gpus_per_node=4, constraint="h100")


def test_a_path_to_a_profile_of_the_folder_is_that_profile(folder):
    assert load_profile(str(folder / "cluster.toml")) == load_profile("cluster")


def test_a_missing_file_is_one_line_naming_the_path(folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as caught:
        load_profile("nowhere/mine.toml")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("--profile nowhere/mine.toml: no such file")
    assert str(tmp_path / "nowhere" / "mine.toml") in message


def test_an_unknown_name_lists_the_folder_it_read(folder):
    with pytest.raises(UserError) as caught:
        load_profile("nosuch")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("unknown profile 'nosuch'; allowed: cluster ")
    assert f"(files in {folder})" in message


def test_a_bad_field_in_a_path_profile_names_the_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("gpus = 2\n")
    with pytest.raises(UserError, match=f"profile {path}: unknown field 'gpus'"):
        load_profile(str(path))
