"""Checkpoints survive crashes mid-save: corrupt or torn files are detected and skipped, never loaded.
Opening one never runs code from it, a plain weights-only torch.load opens it, and the files of earlier
releases (a checksum header before the payload, numpy's RNG state as an ndarray) still resume."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import random
import struct
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from conadv_repro.engine.checkpoint import (
    CHECKPOINT_DIR,
    latest_checkpoint,
    load_latest_checkpoint,
    save_checkpoint,
)
from conadv_repro.engine.rng import capture_rng, restore_rng
from conadv_repro.errors import UserError


def _state(step: int) -> dict:
    return {"step": step, "weight": torch.full((4, 3), float(step)), "meta": {"name": "resnet"}}


def _names(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / CHECKPOINT_DIR).iterdir())


def _skipped(capsys) -> list[str]:
    """What the load printed on stderr: one plain line per skipped checkpoint, nothing else."""
    return capsys.readouterr().err.splitlines()


NO_SEAL = "no checksum seal at its end (cut short, or not written by this suite)"


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


def test_truncated_newest_falls_back(tmp_path: Path, capsys) -> None:
    save_checkpoint(tmp_path, 1, _state(1))
    newest = save_checkpoint(tmp_path, 2, _state(2))
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])
    loaded = load_latest_checkpoint(tmp_path)
    assert _skipped(capsys) == [f"warning: skipping checkpoint {newest}: {NO_SEAL}"]
    assert loaded is not None
    state, path = loaded
    assert state["step"] == 1
    assert path.name == "step-00000001.pt"


def test_truncated_inside_header_falls_back(tmp_path: Path, capsys) -> None:
    save_checkpoint(tmp_path, 1, _state(1))
    newest = save_checkpoint(tmp_path, 2, _state(2))
    newest.write_bytes(newest.read_bytes()[:10])
    loaded = load_latest_checkpoint(tmp_path)
    assert _skipped(capsys) == [f"warning: skipping checkpoint {newest}: file is 10 bytes, too short to hold a "
                                "checkpoint and its seal"]
    assert loaded is not None and loaded[0]["step"] == 1


def test_byte_flipped_newest_falls_back(tmp_path: Path, capsys) -> None:
    save_checkpoint(tmp_path, 1, _state(1))
    newest = save_checkpoint(tmp_path, 2, _state(2))
    data = bytearray(newest.read_bytes())
    data[len(data) - 20] ^= 0xFF
    newest.write_bytes(bytes(data))
    loaded = load_latest_checkpoint(tmp_path)
    assert _skipped(capsys) == [f"warning: skipping checkpoint {newest}: sha256 mismatch"]
    assert loaded is not None and loaded[0]["step"] == 1


def test_unverifiable_file_is_skipped(tmp_path: Path, capsys) -> None:
    # A plain torch.save file has no checksum header, so it cannot be trusted.
    save_checkpoint(tmp_path, 1, _state(1))
    plain = tmp_path / CHECKPOINT_DIR / "step-00000002.pt"
    torch.save(_state(2), plain)
    loaded = load_latest_checkpoint(tmp_path)
    assert _skipped(capsys) == [f"warning: skipping checkpoint {plain}: {NO_SEAL}"]
    assert loaded is not None and loaded[0]["step"] == 1


def test_all_corrupt_is_a_user_error_not_a_fresh_start(tmp_path: Path, capsys) -> None:
    # None would make the trainer start again from step 0 and prune the files; say so instead.
    path = save_checkpoint(tmp_path, 1, _state(1))
    path.write_bytes(b"")
    with pytest.raises(UserError, match="none verifies") as raised:
        load_latest_checkpoint(tmp_path)
    assert _skipped(capsys) == [f"warning: skipping checkpoint {path}: file is 0 bytes, too short to hold a "
                                "checkpoint and its seal"]
    message = str(raised.value)
    assert "\n" not in message and "step-00000001.pt" in message and "from scratch" in message
    # The cheap lookup does not verify.
    assert latest_checkpoint(tmp_path) == path


def test_each_skipped_checkpoint_is_one_plain_line(tmp_path: Path, capsys, recwarn) -> None:
    # Three damaged files, three lines: no warnings-module format, which echoed a source line after each.
    save_checkpoint(tmp_path, 1, _state(1))
    step2 = save_checkpoint(tmp_path, 2, _state(2))
    step3 = save_checkpoint(tmp_path, 3, _state(3))
    final = save_checkpoint(tmp_path, 4, _state(4), final=True)
    assert _names(tmp_path) == ["final.pt", "step-00000002.pt", "step-00000003.pt"]
    final.write_bytes(b"")
    step3.write_bytes(step3.read_bytes()[:-1])
    data = bytearray(step2.read_bytes())
    data[len(data) // 2] ^= 0xFF
    step2.write_bytes(bytes(data))
    with pytest.raises(UserError, match="has 3 checkpoint file"):
        load_latest_checkpoint(tmp_path)
    assert _skipped(capsys) == [
        f"warning: skipping checkpoint {final}: file is 0 bytes, too short to hold a checkpoint and its seal",
        f"warning: skipping checkpoint {step3}: {NO_SEAL}",
        f"warning: skipping checkpoint {step2}: sha256 mismatch",
    ]
    assert len(recwarn) == 0


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


# ------------------------------------------------------------------ safe, plain-zip checkpoints


class _Numpy1Pickler(pickle._Pickler):
    """Pickles numpy arrays as numpy 1.x does (its reconstructor lived in numpy.core, not numpy._core)."""

    def save_global(self, obj, name=None):
        if getattr(obj, "__name__", None) == "_reconstruct":
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)


_NUMPY1_PICKLE = types.SimpleNamespace(Pickler=_Numpy1Pickler, __name__="pickle")


def _legacy_encode(state: dict, *, numpy1: bool = False) -> bytes:
    """The encoding of earlier releases, kept here verbatim: MAGIC | length | sha256 | torch.save."""
    buffer = io.BytesIO()
    torch.save(state, buffer, **({"pickle_module": _NUMPY1_PICKLE} if numpy1 else {}))
    payload = buffer.getvalue()
    return struct.pack(">8sQ32s", b"CONADVC1", len(payload), hashlib.sha256(payload).digest()) + payload


def _tensor_data_offset(path: Path) -> int:
    """Where the bytes of the first tensor's storage start inside the checkpoint's zip."""
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith("/data/0"))
    data = path.read_bytes()
    name_length, extra_length = struct.unpack_from("<HH", data, info.header_offset + 26)
    return info.header_offset + 30 + name_length + extra_length


def _draws() -> tuple:
    return (np.random.random_sample(3).tolist(), np.random.standard_normal(3).tolist(),
            random.random(), random.gauss(0, 1), torch.rand(3).tolist())


def test_a_plain_weights_only_torch_load_opens_a_checkpoint(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path, 7, _state(7))
    state = torch.load(path, weights_only=True)
    assert state["step"] == 7 and state["meta"] == {"name": "resnet"}
    assert torch.equal(state["weight"], torch.full((4, 3), 7.0))


def test_a_flipped_byte_inside_tensor_data_falls_back(tmp_path: Path, capsys) -> None:
    save_checkpoint(tmp_path, 1, _state(1))
    newest = save_checkpoint(tmp_path, 2, _state(2))
    data = bytearray(newest.read_bytes())
    data[_tensor_data_offset(newest) + 5] ^= 0x01
    newest.write_bytes(bytes(data))
    # torch.load alone takes the flipped file without a word: the seal is what catches it.
    silently = torch.load(newest, weights_only=True)
    assert not torch.equal(silently["weight"], torch.full((4, 3), 2.0))
    loaded = load_latest_checkpoint(tmp_path)
    assert _skipped(capsys) == [f"warning: skipping checkpoint {newest}: sha256 mismatch"]
    assert loaded is not None and loaded[0]["step"] == 1


def test_a_torn_newest_falls_back(tmp_path: Path, capsys) -> None:
    # Power lost mid-write: the length is right, but a stretch of blocks never reached the disk.
    save_checkpoint(tmp_path, 1, _state(1))
    newest = save_checkpoint(tmp_path, 2, _state(2))
    data = bytearray(newest.read_bytes())
    third = len(data) // 3
    data[third : 2 * third] = bytes(third)
    newest.write_bytes(bytes(data))
    loaded = load_latest_checkpoint(tmp_path)
    assert _skipped(capsys) == [f"warning: skipping checkpoint {newest}: sha256 mismatch"]
    assert loaded is not None and loaded[0]["step"] == 1


class _Planted:
    """Unpickling this writes a marker file: stands in for the code a hostile checkpoint would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


@pytest.mark.parametrize("encoding", ["current", "legacy"])
def test_a_checkpoint_that_would_run_code_is_refused(tmp_path: Path, encoding: str, capsys) -> None:
    marker = tmp_path / "marker"
    save_checkpoint(tmp_path, 1, _state(1))
    hostile = {**_state(2), "payload": _Planted(marker)}
    newest = tmp_path / CHECKPOINT_DIR / "step-00000002.pt"
    if encoding == "current":
        save_checkpoint(tmp_path, 2, hostile)
        # The file is real: an unrestricted load would run it (and its checksum verifies).
        torch.load(newest, weights_only=False)
    else:
        newest.write_bytes(_legacy_encode(hostile))
        torch.load(io.BytesIO(newest.read_bytes()[48:]), weights_only=False)
    assert marker.read_text() == "ran"
    marker.unlink()
    capsys.readouterr()
    loaded = load_latest_checkpoint(tmp_path)
    (line,) = _skipped(capsys)
    assert line.startswith(f"warning: skipping checkpoint {newest}: refused by the weights-only loader") and "exec" in line
    assert loaded is not None and loaded[0]["step"] == 1
    assert not marker.exists()


def test_rng_streams_resume_exactly_through_a_checkpoint(tmp_path: Path) -> None:
    np.random.seed(3)
    random.seed(3)
    torch.manual_seed(3)
    np.random.standard_normal()  # an odd number of normals leaves a cached gaussian in numpy's state
    random.gauss(0, 1)  # and in python's
    save_checkpoint(tmp_path, 1, {"rng": capture_rng()})
    expected = _draws()
    np.random.seed(99)
    random.seed(99)
    torch.manual_seed(99)
    loaded = load_latest_checkpoint(tmp_path)
    assert loaded is not None
    assert loaded[0]["rng"]["numpy"]["has_gauss"] == 1
    restore_rng(loaded[0]["rng"])
    assert _draws() == expected


@pytest.mark.parametrize("written_with", ["numpy 2", "numpy 1"])
def test_an_old_format_checkpoint_still_loads_and_resumes_numpy_rng(tmp_path: Path, written_with: str) -> None:
    np.random.seed(5)
    random.seed(5)
    np.random.standard_normal()
    old_rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
               "cuda": None}
    assert isinstance(old_rng["numpy"][1], np.ndarray)  # what a weights-only load refuses by default
    path = tmp_path / CHECKPOINT_DIR / "step-00000004.pt"
    path.parent.mkdir()
    data = _legacy_encode({**_state(4), "rng": old_rng}, numpy1=written_with == "numpy 1")
    assert (b"numpy.core.multiarray" in data) == (written_with == "numpy 1")
    path.write_bytes(data)
    expected = _draws()
    np.random.seed(99)
    random.seed(99)
    loaded = load_latest_checkpoint(tmp_path)
    assert loaded is not None and loaded[1] == path
    state = loaded[0]
    assert state["step"] == 4 and torch.equal(state["weight"], torch.full((4, 3), 4.0))
    restore_rng(state["rng"])
    assert _draws() == expected
    # The numpy allow-list is for reading old files only: it is gone once the load returns.
    assert not any("numpy" in str(g) for g in torch.serialization.get_safe_globals())


def test_an_old_format_trainer_checkpoint_resumes(tmp_path: Path) -> None:
    from conadv_repro.config import config_from_overrides
    from conadv_repro.engine.trainer import Trainer

    cfg = config_from_overrides(["batch_size=64", "bn.group_size=16", "runtime.threads=2",
                                 "runtime.device=cpu", "model.width=8"])
    trainer = Trainer(cfg, log=lambda _msg: None)
    np.random.seed(11)
    state = trainer.state_dict()
    # What the previous release's Trainer.state_dict stored.
    state["rng"] = {**state["rng"], "numpy": np.random.get_state(), "python": random.getstate()}
    path = tmp_path / CHECKPOINT_DIR / "step-00000000.pt"
    path.parent.mkdir()
    path.write_bytes(_legacy_encode(state))
    expected = np.random.random_sample(4).tolist()
    np.random.seed(99)
    loaded = load_latest_checkpoint(tmp_path)
    assert loaded is not None
    resumed = Trainer(cfg, log=lambda _msg: None)
    resumed.load_state_dict(loaded[0])
    assert np.random.random_sample(4).tolist() == expected
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key


def test_a_run_whose_every_checkpoint_is_corrupt_stops_in_plain_lines_and_records_why(tmp_path: Path,
                                                                                       capsys) -> None:
    from conadv_repro.train import main

    overrides = ["batch_size=64", "bn.group_size=16", "runtime.threads=2", "runtime.device=cpu",
                 "model.width=8", "steps=6", "runtime.checkpoint_every=2", "runtime.log_every=2"]
    run_dir = tmp_path / "run"
    assert main(["--run-dir", str(run_dir), *overrides]) == 0
    # As if killed before it finished: no final record, only step checkpoints, all of them damaged.
    (run_dir / CHECKPOINT_DIR / "final.pt").unlink()
    record = json.loads((run_dir / "record.json").read_text())
    (run_dir / "record.json").write_text(json.dumps({**record, "status": "running", "steps_done": 4}))
    assert _names(run_dir) == ["step-00000002.pt", "step-00000004.pt"]
    for path in (run_dir / CHECKPOINT_DIR).iterdir():
        path.write_bytes(path.read_bytes()[:-1])
    before = {p.name: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main(["--run-dir", str(run_dir), *overrides])
    # Exit status 1, as for any failed run: unlike a rejected command line, the record says it failed.
    assert exited.value.code == 1
    err = capsys.readouterr().err.splitlines()
    checkpoints = run_dir / CHECKPOINT_DIR
    assert err[:2] == [f"warning: skipping checkpoint {checkpoints / name}: {NO_SEAL}"
                       for name in ("step-00000004.pt", "step-00000002.pt")]
    assert len(err) == 3 and err[2] == (
        f"error: run directory {run_dir} has 2 checkpoint file(s) and none verifies (newest, step-00000004.pt: "
        f"{NO_SEAL}); refusing to start it again from step 0: restore a good checkpoint, or move {checkpoints} "
        "away to train from scratch")
    # Not trained again from step 0: the record says why the run stopped, every other file is as it was.
    after = json.loads((run_dir / "record.json").read_text())
    assert after["status"] == "failed" and after["error"] == err[2].removeprefix("error: ")
    assert after["attempts"] == record["attempts"] + 1 and after["steps_done"] == 4
    assert {p.name: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != "record.json"} == {
        name: data for name, data in before.items() if name != "record.json"}
