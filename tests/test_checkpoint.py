"""Checkpoints survive crashes mid-save: corrupt or torn files are detected and skipped, never loaded."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conadv_repro.engine.checkpoint import (
    CHECKPOINT_DIR,
    latest_checkpoint,
    load_latest_checkpoint,
    save_checkpoint,
)


def _state(step: int) -> dict:
    return {"step": step, "weight": torch.full((4, 3), float(step)), "meta": {"name": "resnet"}}


def _names(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / CHECKPOINT_DIR).iterdir())


def test_round_trip(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path, 123, _state(123))
    assert path == tmp_path / CHECKPOINT_DIR / "step-00000123.pt"
    loaded = load_latest_checkpoint(tmp_path)
    assert loaded is not None
    state, loaded_path = loaded
    assert loaded_path == path
    assert state["step"] == 123
    assert torch.equal(state["weight"], torch.full((4, 3), 123.0))
    assert state["meta"] == {"name": "resnet"}


def test_none_when_no_checkpoint(tmp_path: Path) -> None:
    assert load_latest_checkpoint(tmp_path) is None
    assert latest_checkpoint(tmp_path) is None
    (tmp_path / CHECKPOINT_DIR).mkdir()
    assert load_latest_checkpoint(tmp_path) is None
    assert latest_checkpoint(tmp_path) is None


def test_pruning_keeps_last_two_and_final(tmp_path: Path) -> None:
    for step in (10, 20, 30, 40):
        save_checkpoint(tmp_path, step, _state(step))
    assert _names(tmp_path) == ["step-00000030.pt", "step-00000040.pt"]
    save_checkpoint(tmp_path, 50, _state(50), final=True)
    assert _names(tmp_path) == ["final.pt", "step-00000030.pt", "step-00000040.pt"]
    save_checkpoint(tmp_path, 60, _state(60))
    assert _names(tmp_path) == ["final.pt", "step-00000040.pt", "step-00000060.pt"]


def test_final_is_newest(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, 10, _state(10))
    save_checkpoint(tmp_path, 20, _state(20), final=True)
    assert latest_checkpoint(tmp_path) == tmp_path / CHECKPOINT_DIR / "final.pt"
    loaded = load_latest_checkpoint(tmp_path)
    assert loaded is not None and loaded[0]["step"] == 20


def test_steps_order_numerically(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, 99_999_999, _state(1))
    save_checkpoint(tmp_path, 100_000_000, _state(2))
    assert latest_checkpoint(tmp_path) == tmp_path / CHECKPOINT_DIR / "step-100000000.pt"


def test_truncated_newest_falls_back(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, 1, _state(1))
    newest = save_checkpoint(tmp_path, 2, _state(2))
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])
    with pytest.warns(RuntimeWarning, match="corrupt or incomplete"):
        loaded = load_latest_checkpoint(tmp_path)
    assert loaded is not None
    state, path = loaded
    assert state["step"] == 1
    assert path.name == "step-00000001.pt"


def test_truncated_inside_header_falls_back(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, 1, _state(1))
    newest = save_checkpoint(tmp_path, 2, _state(2))
    newest.write_bytes(newest.read_bytes()[:10])
    with pytest.warns(RuntimeWarning, match=str(newest).replace("\\", "\\\\")):
        loaded = load_latest_checkpoint(tmp_path)
    assert loaded is not None and loaded[0]["step"] == 1


def test_byte_flipped_newest_falls_back(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, 1, _state(1))
    newest = save_checkpoint(tmp_path, 2, _state(2))
    data = bytearray(newest.read_bytes())
    data[len(data) - 20] ^= 0xFF
    newest.write_bytes(bytes(data))
    with pytest.warns(RuntimeWarning, match="sha256 mismatch"):
        loaded = load_latest_checkpoint(tmp_path)
    assert loaded is not None and loaded[0]["step"] == 1


def test_unverifiable_file_is_skipped(tmp_path: Path) -> None:
    # A plain torch.save file has no checksum header, so it cannot be trusted.
    save_checkpoint(tmp_path, 1, _state(1))
    torch.save(_state(2), tmp_path / CHECKPOINT_DIR / "step-00000002.pt")
    with pytest.warns(RuntimeWarning):
        loaded = load_latest_checkpoint(tmp_path)
    assert loaded is not None and loaded[0]["step"] == 1


def test_all_corrupt_gives_none(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path, 1, _state(1))
    path.write_bytes(b"")
    with pytest.warns(RuntimeWarning):
        assert load_latest_checkpoint(tmp_path) is None
    # The cheap lookup does not verify.
    assert latest_checkpoint(tmp_path) == path


def test_leftover_temp_file_is_ignored_and_cleaned(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, 1, _state(1))
    # What atomic_write_bytes leaves behind if the process dies before its rename.
    leftover = tmp_path / CHECKPOINT_DIR / ".step-00000002.pt.abc123.tmp"
    leftover.write_bytes(b"partial")
    unrelated = tmp_path / CHECKPOINT_DIR / "notes.txt"
    unrelated.write_text("keep me")
    loaded = load_latest_checkpoint(tmp_path)
    assert loaded is not None and loaded[0]["step"] == 1
    assert latest_checkpoint(tmp_path) == tmp_path / CHECKPOINT_DIR / "step-00000001.pt"
    save_checkpoint(tmp_path, 3, _state(3))
    assert not leftover.exists()
    assert unrelated.exists()


def test_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        save_checkpoint(tmp_path, -1, _state(1))
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path, 1, [1, 2])  # type: ignore[arg-type]
