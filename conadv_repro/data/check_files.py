"""Can every image file of an ImageNet data root be read? `--check-data` of the launcher and of `train`.

A paper-scale job dies at the first file its loader cannot decode, hours into training and after its wait
in the queue; a copy of ImageNet cut short by a full disk or an interrupted rsync has such files. This
check finds them before anything is submitted, without decoding pixels: a decode reads the whole file
(ImageNet is about 140 GB) and costs about 2 ms of CPU (PIL, a 110 kB JPEG, AMD EPYC: 45 CPU-minutes for
1.33M files), where this check reads each file's first and last 4 KiB, about 0.06 ms warm.

Which files: those ImageFolder (torchvision.datasets.folder.make_dataset, what `build_imagenet` loads
with) takes, i.e. every name ending in an extension of `imagenet_layout.IMG_EXTENSIONS`, in any case,
anywhere under ROOT/{train,val}/<wnid>/ (sub-folders walked, links followed). Other names (README.txt)
are not loaded and not checked.

The rules, each a reason printed beside the file's path:

- A folder named like an image (`x.JPEG/`): ImageFolder walks into it instead of loading it, so the image
  its name promises is not there (an archive unpacked under the image's name, a copy gone wrong).
- A name that cannot be opened or read (permissions, a broken link) or is not a regular file (a FIFO
  would block the loader), and an empty file.
- The first bytes must be the signature of a format PIL (ImageFolder's loader) identifies by content,
  whatever the extension: JPEG `FF D8 FF`, PNG `89 50 4E 47 0D 0A 1A 0A`, GIF `GIF87a`/`GIF89a`, BMP `BM`,
  TIFF `II*\\0`/`MM\\0*` (and BigTIFF), WebP `RIFF....WEBP`, PBM/PGM/PPM `P1`..`P6`, JPEG 2000.
  So ImageNet's PNG named .JPEG (train/n02105855/n02105855_2933.JPEG) and its 22 CMYK JPEGs, which PIL
  reads, pass; an HTML error page or a text file saved as .JPEG does not. Formats without a signature
  (TGA) are listed as not an image: none is in ImageNet.
- JPEG (ITU-T T.81, B.2): the marker segments of the header are walked by their lengths, as PIL's
  JpegImagePlugin does (skipping fill bytes and junk between segments, as it does), up to the first
  start-of-scan (SOS, `FF DA`), which must follow a frame header (SOFn). A file that ends inside its
  header is truncated. Then an end-of-image marker (EOI, `FF D9`) must follow the SOS. Inside the
  entropy-coded data an `FF` byte is always followed by `00` or a restart marker (T.81, B.1.1.5), so an
  `FF D9` after the SOS is the real EOI and a file cut anywhere in its image data has none. The EOI need
  not be the last two bytes: real JPEGs carry bytes after it (zero padding, camera trailers, a second
  image appended by MPF), which decoders ignore. So the search goes backwards from the end in 4 KiB
  steps and stops at the first EOI found: one 4 KiB read for an ordinary file, and a longer trailer
  costs a few more reads rather than being refused, as a "last few KB" rule would refuse it.
  This is stricter than PIL in one case: a file whose end was replaced by zeros (a crash mid-copy) lost
  its EOI, yet PIL decodes it without an error into a garbled image; it is listed.
- PNG (ISO/IEC 15948, 5.6): an `IEND` chunk must follow the signature (searched backwards the same way).
  Any truncation removes it; PIL also reads a file that lost exactly its 12-byte IEND and nothing else,
  which is listed here as truncated too.
- BMP and WebP store their file size in the header (BITMAPFILEHEADER.bfSize; the RIFF chunk size + 8):
  a shorter file is truncated. GIF, TIFF, PNM and JPEG 2000 files get the signature check alone.

Speed: one open, fstat, a 4 KiB read at each end and a close per file, in a pool of processes over the
class folders (`os.sched_getaffinity`), so that the I/O waits of one overlap the others' work; readahead
is turned off (POSIX_FADV_RANDOM) so a cold read fetches those two pages, not the whole file.
`benchmarks/check_data.py` measures it; docs/bad-input.md has the figures.

A clean result is remembered, so a relaunch does not pay for the reads again: keyed by a SHA-256 of every
checked name's (path relative to the root, size, mtime_ns) and of these rules' version, stored atomically
in `$XDG_CACHE_HOME/conadv-repro/check-data/<SHA-256 of the root's absolute path>.json` (default
`~/.cache`), not in the dataset folder, which is often read-only. A relaunch then stats every file (the
cost of listing, parallel too) and reads none; any added, removed, resized or touched file makes it
check all again. A result with unreadable files is not remembered.

No torch import: the launcher starts without one.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import stat
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from conadv_repro.atomic import atomic_write_json, read_json_dict
from conadv_repro.data.imagenet_layout import PARTS, check_imagenet_layout, class_folders, is_image
from conadv_repro.errors import UserError

# Bumped whenever a rule above changes, so that a remembered result of the old rules is not trusted.
RULES_VERSION = 1
BLOCK = 4096  # bytes read at each end of a file: one page
SHOWN = 20  # unreadable files listed; the count says how many there are in all
PROGRESS_EVERY_S = 5.0  # a progress line this often when stderr is not a terminal (a log)
TTY_REFRESH_S = 0.5

JPEG = b"\xff\xd8\xff"
PNG = b"\x89PNG\r\n\x1a\n"
# Header-only formats: (signature, offset) pairs PIL's plugins accept.
OTHER_SIGNATURES = (
    (b"GIF87a", 0), (b"GIF89a", 0),
    (b"II*\x00", 0), (b"MM\x00*", 0), (b"II+\x00", 0), (b"MM\x00+", 0),  # TIFF, BigTIFF
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", 0), (b"\xff\x4f\xff\x51", 0),  # JPEG 2000: JP2 box, raw codestream
) + tuple((b"P" + bytes([digit]), 0) for digit in b"123456")  # PBM, PGM, PPM (plain and raw)
EOI = b"\xff\xd9"
# Markers that stand alone, without a length: TEM, RST0-7, SOI (T.81, Table B.1); 00 and FF are PIL's junk.
NO_LENGTH = {0x00, 0x01, *range(0xD0, 0xD9)}
SOF = {*range(0xC0, 0xD0)} - {0xC4, 0xC8, 0xCC}  # frame headers; C4 is DHT, C8 reserved, CC DAC


# -- one file ---------------------------------------------------------------------------------------------

class _Bytes:
    """Reads of one open file at given offsets, each page read once."""

    def __init__(self, fd: int, size: int, head: bytes) -> None:
        self.fd, self.size = fd, size
        self.windows = [(0, head)]

    def read(self, offset: int, count: int) -> bytes:
        count = min(count, self.size - offset)
        if count <= 0:
            return b""
        for start, data in self.windows:
            if start <= offset and offset + count <= start + len(data):
                return data[offset - start:offset - start + count]
        data = os.pread(self.fd, max(count, BLOCK), offset)
        self.windows.append((offset, data))
        return data[:count]

    def found_backwards(self, token: bytes, stop: int) -> bool:
        """Whether `token` occurs after offset `stop`, searching from the end in BLOCK steps."""
        end = self.size
        while end > stop:
            start = max(stop, end - BLOCK)
            # One byte of overlap with the block after, so that a token across the boundary is seen.
            if token in self.read(start, end - start + len(token) - 1):
                return True
            end = start
        return False


def _jpeg_scan_start(data: _Bytes) -> int | str:
    """The offset of the first SOS marker, or why the header is unreadable."""
    pos, frame = 2, False
    while True:
        pair = data.read(pos, 2)
        if len(pair) < 2:
            return "truncated in its header (the file ends before the image data)"
        if pair[0] != 0xFF:
            # PIL skips bytes that are no marker between segments; so does this, a block at a time.
            chunk = data.read(pos, BLOCK)
            skip = chunk.find(b"\xff")
            pos += len(chunk) if skip < 0 else skip
            continue
        marker = pair[1]
        if marker == 0xFF:  # a fill byte before a marker
            pos += 1
            continue
        if marker == 0xDA:
            return pos if frame else "corrupt JPEG header: image data (SOS) before any frame header (SOF)"
        if marker == 0xD9:
            return "no image data: the end-of-image marker comes before any scan"
        if marker in NO_LENGTH:
            pos += 2
            continue
        frame = frame or marker in SOF
        length = data.read(pos + 2, 2)
        if len(length) < 2:
            return "truncated in its header (the file ends before the image data)"
        pos += 2 + int.from_bytes(length, "big")


def _format_problem(data: _Bytes, head: bytes) -> str | None:
    """Why a non-empty file's bytes are no readable image, or None."""
    size = data.size
    if head.startswith(JPEG):
        scan = _jpeg_scan_start(data)
        if isinstance(scan, str):
            return scan
        if not data.found_backwards(EOI, scan + 2):
            return "truncated: no JPEG end-of-image marker (FF D9) after its image data"
        return None
    if head.startswith(PNG):
        if not data.found_backwards(b"IEND", len(PNG)):
            return "truncated: no PNG IEND chunk after its image data"
        return None
    if head.startswith(b"BM"):
        if len(head) < 14:
            return "truncated in its header (a BMP file header is 14 bytes)"
        declared = int.from_bytes(head[2:6], "little")
        if declared > size:
            return f"truncated: its BMP header says {declared:,} bytes, the file has {size:,}"
        return None
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        declared = int.from_bytes(head[4:8], "little") + 8
        if declared > size:
            return f"truncated: its WebP header says {declared:,} bytes, the file has {size:,}"
        return None
    if any(head.startswith(signature, offset) for signature, offset in OTHER_SIGNATURES):
        return None
    return f"not an image: no JPEG, PNG or other image signature (it starts with {head[:12]!r})"


def check_file(path: str) -> tuple[str | None, int, int]:
    """(why the file cannot be read as an image or None, its size, its mtime_ns); sizes -1 when unknown."""
    try:
        # O_NONBLOCK: opening a FIFO named like an image would otherwise wait for a writer forever.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as error:
        return f"cannot be opened ({error.strerror or error})", -1, -1
    try:
        info = os.fstat(fd)
        size, mtime = info.st_size, info.st_mtime_ns
        if stat.S_ISDIR(info.st_mode):
            return "a folder, not an image file (named like one)", size, mtime
        if not stat.S_ISREG(info.st_mode):
            return "not a regular file", size, mtime
        if size == 0:
            return "empty (0 bytes)", size, mtime
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        head = os.pread(fd, BLOCK, 0)
        return _format_problem(_Bytes(fd, size, head), head), size, mtime
    except OSError as error:
        return f"cannot be read ({error.strerror or error})", -1, -1
    finally:
        os.close(fd)


# -- one class folder (a unit of work) --------------------------------------------------------------------

def _images(folder: str) -> Iterator[tuple[str, bool]]:
    """(path, is a folder) of every name ImageFolder would take under `folder`, walked as it walks it
    (links followed; each real folder once, where a link loop would make ImageFolder walk forever)."""
    pending, seen = [folder], set()
    while pending:
        current = pending.pop()
        try:
            info = os.stat(current)
            if (info.st_dev, info.st_ino) in seen:
                continue
            seen.add((info.st_dev, info.st_ino))
            with os.scandir(current) as entries:
                listed = list(entries)
        except OSError:
            continue  # the layout check reports unreadable class folders; ImageFolder skips such a folder
        for entry in listed:
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            if is_dir:
                pending.append(entry.path)
            if is_image(entry.name):
                yield entry.path, is_dir


@dataclass
class FolderResult:
    """What one worker found in one class folder: its part of the key, and its unreadable files."""

    folder: str
    digest: str
    files: int
    bytes: int
    problems: int = 0
    first: list[tuple[str, str]] = field(default_factory=list)  # the SHOWN first (path, reason), sorted


def _digest(root: str, rows: list[tuple[str, int, int]]) -> str:
    skip = len(root) + 1  # every path is ROOT/...: slicing is what relpath would give, at a tenth of its cost
    lines = sorted(f"{path[skip:]}\0{size}\0{mtime}\n" for path, size, mtime in rows)
    return hashlib.sha256("".join(lines).encode("utf-8", "surrogateescape")).hexdigest()


def stat_folder(task: tuple[str, str]) -> FolderResult:
    """The key of one class folder from a stat of each file: what a relaunch pays instead of reading."""
    root, folder = task
    rows = []
    for path, _ in _images(folder):
        try:
            info = os.stat(path)
            rows.append((path, info.st_size, info.st_mtime_ns))
        except OSError:
            rows.append((path, -1, -1))
    return FolderResult(folder, _digest(root, rows), len(rows), sum(max(r[1], 0) for r in rows))


def check_folder(task: tuple[str, str]) -> FolderResult:
    """Check every image file of one class folder; its key comes from the same open (fstat), for free."""
    root, folder = task
    rows, problems = [], []
    for path, is_dir in _images(folder):
        if is_dir:
            reason, size, mtime = "a folder, not an image file (named like one)", -1, -1
        else:
            reason, size, mtime = check_file(path)
        rows.append((path, size, mtime))
        if reason:
            problems.append((path, reason))
    problems.sort()
    return FolderResult(folder, _digest(root, rows), len(rows), sum(max(r[1], 0) for r in rows),
                        len(problems), problems[:SHOWN])


# -- the whole root ---------------------------------------------------------------------------------------

def processes_available() -> int:
    """The cores this process may run on (a Slurm allocation or taskset, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


class Progress:
    """Files done and files/s on stderr: a line rewritten in place on a terminal, a line every few seconds
    in a log."""

    def __init__(self, what: str, folders: int, processes: int, stream: TextIO | None = None) -> None:
        self.what, self.folders, self.processes = what, folders, processes
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.start = self.last = time.monotonic()
        self.files = self.done = 0
        self.shown = False

    def update(self, result: FolderResult) -> None:
        self.files += result.files
        self.done += 1
        now = time.monotonic()
        if now - self.last < (TTY_REFRESH_S if self.tty else PROGRESS_EVERY_S):
            return
        self.last = now
        rate = self.files / max(now - self.start, 1e-9)
        line = (f"{self.what}: {self.files:,} files, {self.done:,} of {self.folders:,} class folders "
                f"({100 * self.done / self.folders:.0f}%), {rate:,.0f} files/s on {self.processes} processes")
        print(f"\r{line}\x1b[K" if self.tty else line, end="" if self.tty else "\n", file=self.stream,
              flush=True)
        self.shown = True

    def close(self) -> float:
        """Seconds since the start; ends a terminal's progress line."""
        if self.tty and self.shown:
            print("\r\x1b[K", end="", file=self.stream, flush=True)
        return time.monotonic() - self.start


def _run(work: Callable[[tuple[str, str]], FolderResult], tasks: list[tuple[str, str]], processes: int,
         progress: Progress) -> list[FolderResult]:
    results = []
    if processes <= 1:
        for task in tasks:
            results.append(work(task))
            progress.update(results[-1])
        return results
    # fork where there is one: the workers need nothing but this module, and start at once.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
    with multiprocessing.get_context(method).Pool(processes) as pool:
        # One class folder a task: 2,000 tasks for ImageNet, small enough to keep every process busy to the end.
        for result in pool.imap_unordered(work, tasks, chunksize=1):
            results.append(result)
            progress.update(result)
    return results


def cache_path(root: Path, cache_dir: Path | None = None) -> Path:
    """Where the clean result of `root` is remembered: $XDG_CACHE_HOME/conadv-repro/check-data/..."""
    if cache_dir is None:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        cache_dir = Path(base) / "conadv-repro" / "check-data"
    return cache_dir / f"{hashlib.sha256(str(root).encode('utf-8', 'surrogateescape')).hexdigest()[:32]}.json"


def _key(results: list[FolderResult]) -> str:
    key = hashlib.sha256(f"rules {RULES_VERSION}\n".encode())
    for result in sorted(results, key=lambda r: r.folder):
        key.update(f"{result.folder}\0{result.digest}\n".encode("utf-8", "surrogateescape"))
    return key.hexdigest()


@dataclass
class CheckReport:
    """The outcome of `check_image_files`."""

    root: Path
    files: int
    bytes: int
    seconds: float
    processes: int
    problems: int
    first: list[tuple[str, str]]  # the SHOWN first (path, reason), in path order
    remembered: str | None = None  # the time of the remembered clean check this one relied on

    @property
    def rate(self) -> float:
        return self.files / max(self.seconds, 1e-9)


def _timing(files: int, seconds: float, processes: int) -> str:
    return f"{seconds:.1f} s, {files / max(seconds, 1e-9):,.0f} files/s on {processes} process{'es' if processes > 1 else ''}"


def check_image_files(data_root: str | Path, *, flag: str = "--data-root", processes: int | None = None,
                      cache_dir: Path | None = None, use_cache: bool = True,
                      stream: TextIO | None = None) -> CheckReport:
    """Check every image file of ROOT/train and ROOT/val (see the module docstring); no output but progress.

    The layout is checked first (a UserError in one line); the result says what the files are."""
    check_imagenet_layout(data_root, flag)
    root = Path(data_root).resolve()
    processes = processes or processes_available()
    tasks = [(str(root), str(root / part / name)) for part in PARTS for name in class_folders(root, part, flag)]
    cache = cache_path(root, cache_dir)
    remembered = read_json_dict(cache) if use_cache else None
    if remembered and remembered.get("rules") == RULES_VERSION:
        progress = Progress("listing image files", len(tasks), processes, stream)
        listed = _run(stat_folder, tasks, processes, progress)
        seconds = progress.close()
        if remembered.get("key") == _key(listed):
            return CheckReport(root, sum(r.files for r in listed), sum(r.bytes for r in listed), seconds,
                               processes, 0, [], remembered=str(remembered.get("checked", "before")))
    progress = Progress("checking image files", len(tasks), processes, stream)
    results = _run(check_folder, tasks, processes, progress)
    seconds = progress.close()
    problems = sum(r.problems for r in results)
    first = sorted(problem for r in results for problem in r.first)[:SHOWN]
    report = CheckReport(root, sum(r.files for r in results), sum(r.bytes for r in results), seconds, processes,
                         problems, first)
    if use_cache and not problems:
        try:
            atomic_write_json(cache, {"rules": RULES_VERSION, "root": str(root), "key": _key(results),
                                      "files": report.files, "bytes": report.bytes,
                                      "checked": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                      "seconds": round(seconds, 1), "processes": processes})
        except OSError as error:
            # Only a relaunch's time is lost: say so, and go on.
            print(f"warning: --check-data could not remember its result in {cache} ({error.strerror or error}); "
                  "a relaunch will check again", file=sys.stderr)
    return report


def require_readable(data_root: str | Path, *, flag: str = "--data-root", **options: Any) -> CheckReport:
    """`--check-data`: check, print one line when every file is readable, or list the unreadable ones on
    stderr and raise the one-line UserError (exit status 2) that ends the command."""
    try:
        report = check_image_files(data_root, flag=flag, **options)
    except KeyboardInterrupt:
        print("\ninterrupted: the data check stopped before its end", file=sys.stderr)
        raise SystemExit(130) from None
    shown = f"{flag} {data_root}" if flag.startswith("--") else f"{flag}={data_root}"
    if report.remembered:
        print(f"data check: {report.files:,} image files under {report.root} unchanged since their check of "
              f"{report.remembered}, all readable (listed in {_timing(report.files, report.seconds, report.processes)}; "
              f"remembered in {cache_path(report.root, options.get('cache_dir'))})", flush=True)
        return report
    if not report.problems:
        print(f"data check: all {report.files:,} image files under {report.root} are readable "
              f"({report.bytes / 2**30:,.1f} GiB; {_timing(report.files, report.seconds, report.processes)})",
              flush=True)
        return report
    for path, reason in report.first:
        print(f"unreadable: {path}: {reason}", file=sys.stderr)
    if report.problems > len(report.first):
        print(f"... and {report.problems - len(report.first):,} more", file=sys.stderr)
    raise UserError(f"{shown}: {report.problems:,} of {report.files:,} image files cannot be read (listed above); "
                    "replace them from the original archives (or delete them, which changes the dataset), then "
                    "run again")
