"""`--check-data`: every image file of an ImageNet root is read at both ends before anything is submitted.

Real image files, a few bytes each (the rules read headers and tails, never pixels), in a generated tree.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from PIL import Image

from conadv_repro import train
from conadv_repro.data import check_files
from conadv_repro.data.check_files import check_image_files
from conadv_repro.launch import cli
from tests.helpers import call_main, run_cli

CLASSES = ("n01440764", "n01443537")


def jpeg(mode: str = "RGB", size: tuple[int, int] = (48, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise(size, 64).convert(mode).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def png() -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise((32, 24), 64).convert("RGB").save(buffer, "PNG")
    return buffer.getvalue()


def clean_tree(root: Path) -> Path:
    """ROOT/{train,val}/<wnid>/ of good JPEGs, with ImageNet's oddities that PIL reads: a PNG named .JPEG and
    a CMYK JPEG."""
    good = jpeg()
    for part in ("train", "val"):
        for wnid in CLASSES:
            folder = root / part / wnid
            folder.mkdir(parents=True)
            for i in range(3):
                (folder / f"{wnid}_{i}.JPEG").write_bytes(good)
    first = root / "train" / CLASSES[0]
    (first / "n02105855_2933.JPEG").write_bytes(png())
    (first / "cmyk.JPEG").write_bytes(jpeg("CMYK"))
    (first / "README.txt").write_text("not an image name: ImageFolder never loads it")
    return root


BAD = {  # name in train/<first class>: the reason listed
    "truncated.JPEG": "truncated: no JPEG end-of-image marker (FF D9) after its image data",
    "empty.JPEG": "empty (0 bytes)",
    "text.JPEG": "not an image: no JPEG, PNG or other image signature (it starts with b'<html><body>')",
    "x.JPEG": "a folder, not an image file (named like one)",
}


def bad_tree(root: Path) -> Path:
    clean_tree(root)
    first = root / "train" / CLASSES[0]
    good = jpeg()
    (first / "truncated.JPEG").write_bytes(good[:len(good) // 2])
    (first / "empty.JPEG").touch()
    (first / "text.JPEG").write_text("<html><body>404 Not Found</body></html>")
    (first / "x.JPEG").mkdir()
    return root


@pytest.fixture(autouse=True)
def cache_home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg"


def test_imagenets_odd_but_readable_files_pass_and_broken_ones_are_named(tmp_path):
    root = bad_tree(tmp_path / "imagenet")
    report = check_image_files(root, processes=1)
    # 6 + 6 good, the PNG and the CMYK JPEG; the 4 bad ones (the folder counts as a name ImageFolder takes).
    assert report.files == 18 and report.problems == 4
    assert {Path(path).name: reason for path, reason in report.first} == BAD
    assert not check_files.cache_path(root.resolve()).exists()  # a result with problems is not remembered


@pytest.mark.parametrize("name, data, reason", [
    ("trailer.JPEG", jpeg() + b"\0" * 9000 + b"camera trailer", None),  # bytes after EOI: decoders ignore them
    ("mpf.JPEG", jpeg() + jpeg(size=(16, 16)), None),  # a second image appended
    ("zeroed.JPEG", (lambda d: d[:-200] + b"\0" * 200)(jpeg()), "truncated: no JPEG end-of-image"),
    ("header.JPEG", jpeg()[:30], "truncated in its header"),
    ("png-cut.JPEG", png()[:-40], "truncated: no PNG IEND chunk"),
])
def test_each_rule(tmp_path, name, data, reason):
    path = tmp_path / name
    path.write_bytes(data)
    found, size, _ = check_files.check_file(str(path))
    assert size == len(data)
    assert (found is None) if reason is None else (found or "").startswith(reason), found


def test_a_cut_bmp_is_truncated_and_a_broken_link_cannot_be_opened(tmp_path):
    buffer = io.BytesIO()
    Image.new("RGB", (20, 20)).save(buffer, "BMP")
    (tmp_path / "a.bmp").write_bytes(buffer.getvalue()[:-100])
    assert check_files.check_file(str(tmp_path / "a.bmp"))[0].startswith("truncated: its BMP header says")
    os.symlink(tmp_path / "nowhere", tmp_path / "b.JPEG")
    assert check_files.check_file(str(tmp_path / "b.JPEG"))[0] == "cannot be opened (No such file or directory)"


def test_the_launcher_lists_every_unreadable_file_and_exits_2(tmp_path, cli_env):
    root = bad_tree(tmp_path / "imagenet")
    runs = tmp_path / "runs"
    cli_env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")
    out = run_cli(["-m", "conadv_repro.launch", "table1", "--scale", "paper", "--data-root", str(root),
                   "--profile", "example-gpu", "--dry-run", "--check-data", "--runs-dir", str(runs)],
                  cli_env, tmp_path, timeout=60)
    assert out.returncode == 2, out.stdout + out.stderr
    listed = [line for line in out.stderr.splitlines() if line.startswith("unreadable: ")]
    first = root.resolve() / "train" / CLASSES[0]
    assert listed == [f"unreadable: {first / name}: {reason}" for name, reason in sorted(BAD.items())]
    assert out.stderr.splitlines()[-1] == (f"error: --data-root {root}: 4 of 18 image files cannot be read (listed "
                                           "above); replace them from the original archives (or delete them, "
                                           "which changes the dataset), then run again")
    assert "Traceback" not in out.stderr and not runs.exists() and out.stdout == ""


def test_train_lists_them_too_before_training(tmp_path, capsys):
    root = bad_tree(tmp_path / "imagenet")
    status, out, err = call_main(train.main, ["--run-dir", str(tmp_path / "run"), "--check-data", "data=imagenet",
                                              f"data_root={root}"], capsys)
    assert status == 2 and err.count("unreadable: ") == 4, err
    assert f"error: data_root={root}: 4 of 18 image files cannot be read" in err
    assert not (tmp_path / "run").exists()


def test_many_are_shown_up_to_a_count(tmp_path, monkeypatch, capsys):
    root = clean_tree(tmp_path / "imagenet")
    for i in range(25):
        (root / "val" / CLASSES[1] / f"e{i:02d}.JPEG").touch()
    status, _, err = call_main(cli.main, ["table1", "--scale", "paper", "--data-root", str(root), "--profile",
                                          "example-gpu", "--dry-run", "--check-data",
                                          "--runs-dir", str(tmp_path / "runs")], capsys)
    assert status == 2 and err.count("unreadable: ") == check_files.SHOWN == 20
    assert "... and 5 more\n" in err and "25 of 39 image files cannot be read" in err


def test_a_clean_root_passes_the_launch_goes_on_and_a_relaunch_reads_nothing(tmp_path, monkeypatch, capsys):
    root = clean_tree(tmp_path / "imagenet")
    args = ["table1", "--scale", "paper", "--data-root", str(root), "--profile", "example-gpu", "--dry-run",
            "--check-data", "--runs-dir", str(tmp_path / "runs")]
    status, out, _ = call_main(cli.main, args, capsys)
    assert status == 0 and f"data check: all 14 image files under {root.resolve()} are readable" in out
    assert "a launch would submit 28 runs" in out  # the dry run went on

    def no_reads(path: str) -> None:
        raise AssertionError(f"{path} was read again")

    monkeypatch.setattr(check_files, "check_file", no_reads)
    monkeypatch.setattr(check_files, "processes_available", lambda: 1)  # in this process, where the patch is
    status, out, _ = call_main(cli.main, args, capsys)
    assert status == 0 and "data check: 14 image files under" in out and "unchanged since their check of" in out
    assert "a launch would submit 28 runs" in out


def test_a_touched_file_is_checked_again(tmp_path, monkeypatch):
    root = clean_tree(tmp_path / "imagenet")
    assert not check_image_files(root, processes=1).remembered
    assert check_image_files(root, processes=1).remembered
    target = root / "val" / CLASSES[0] / f"{CLASSES[0]}_0.JPEG"
    info = target.stat()
    os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns + 1_000_000))  # same bytes, newer mtime
    opened = []
    real = check_files.check_file
    monkeypatch.setattr(check_files, "check_file", lambda path: opened.append(path) or real(path))
    report = check_image_files(root, processes=1)
    assert not report.remembered and len(opened) == 14
    target.write_bytes(b"")  # and a file broken since is found, its result not taken from the cache
    assert check_image_files(root, processes=1).problems == 1


def test_progress_and_speed_go_to_stderr(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(check_files, "PROGRESS_EVERY_S", 0.0)
    check_image_files(clean_tree(tmp_path / "imagenet"), processes=2, use_cache=False)
    err = capsys.readouterr().err
    assert "checking image files: " in err and "of 4 class folders" in err and "files/s on 2 processes" in err


def test_refused_where_it_has_no_use(tmp_path, capsys):
    status, _, err = call_main(cli.main, ["status", "table1", "--check-data"], capsys)
    assert status == 2 and err.startswith("error: --check-data has no use with status;")
    status, _, err = call_main(cli.main, ["table1", "--check-data", "--dry-run",
                                          "--runs-dir", str(tmp_path / "runs")], capsys)
    assert status == 2 and err == ("error: --check-data has no use with --scale smoke (data=digits); it checks the "
                                   "ImageNet image files of --scale paper's --data-root\n")
    status, _, err = call_main(cli.main, ["table1", "--check-data", "--estimate"], capsys)
    assert status == 2 and "--check-data has no use with --estimate" in err
    status, _, err = call_main(train.main, ["--check-data", "--run-dir", str(tmp_path / "r")], capsys)
    assert status == 2 and err == ("error: --check-data has no use with data=digits; it checks the image files of "
                                   "data=imagenet's data_root\n")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "r").exists()
