"""Host memory of one rank: the figures conadv_repro/launch/host_memory.py states, measured on this machine.

1. process: the resident memory (VmRSS) of a fresh Python after `import torch, torchvision`, and after the
   training code too (`conadv_repro.engine.run`), each in a process of its own.
2. index: the bytes per example of the ImageNet index a rank holds (conadv_repro/data/datasets.py
   build_imagenet: ImageFolder's `(path, label)` tuples, kept in FileImages lists for train, val and test):
   the growth of VmRSS while building that index for ILSVRC-2012's 1,281,167 + 50,000 images, with paths
   of ImageNet's shape (`/data/imagenet/train/n01440764/n01440764_10026.JPEG`), in a process of its own.
3. worker: a loader worker's own memory: its private pages (Private_Clean + Private_Dirty of
   /proc/PID/smaps, the pages a cgroup charges to it alone), leaving out /dev/shm (the batches it hands
   over, counted by host_memory.py as batches in flight), while the suite's train loader
   (`train_micro_batches`, uint8 batches as on CUDA) assembles micro-batches of --micro images at 224 px
   from an ImageNet-shaped JPEG folder (benchmarks/loader.py builds it); sampled while each micro-batch is
   taken, the peak over samples and workers. The folder is small, so this leaves out the copy of the
   index a worker makes as it reads it (counted by host_memory.py from figure 2).

    python benchmarks/host_memory.py                     # about a minute on 2 cores
    python benchmarks/host_memory.py --micro 256 --workers 2 --steps 6
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

MIB = 2 ** 20
REPO = Path(__file__).resolve().parent.parent
IMAGENET_TRAIN, IMAGENET_TEST, CLASSES = 1_281_167, 50_000, 1000

RSS = "int(next(l for l in open('/proc/self/status') if l.startswith('VmRSS')).split()[1]) * 1024"
PRIVATE = ("sum(int(l.split()[1]) * 1024 for l in open('/proc/self/smaps_rollup') "
           "if l.startswith(('Private_Clean', 'Private_Dirty')))")
SHARE = 8  # a worker of 8 (the paper scale's) reads an eighth of the examples in an epoch
IMPORTS = (
    "import json\n"
    f"def rss(): return {RSS}\n"
    "import torch, torchvision\n"
    "first = rss()\n"
    "from conadv_repro.engine.run import run_training\n"
    "print(json.dumps({'torch_torchvision': first, 'training_code': rss()}))\n"
)
# build_imagenet's index, without the files: ImageFolder's samples (paths joined per class, one label
# object per class), the held-out split as index arrays, and FileImages' lists of the shared tuples.
INDEX = (
    "import json, os\n"
    "import numpy as np\n"
    "from conadv_repro.data.sources import FileImages\n"
    f"def rss(): return {RSS}\n"
    f"def private(): return {PRIVATE}\n"
    f"train_n, test_n, classes = {IMAGENET_TRAIN}, {IMAGENET_TEST}, {CLASSES}\n"
    "before = rss()\n"
    "def folder(split, count):\n"
    "    labels = {f'n{c:08d}': c for c in range(classes)}\n"
    "    return [(os.path.join('/data/imagenet', split, wnid, f'{wnid}_{k + 10000}.JPEG'), label)\n"
    "            for wnid, label in labels.items() for k in range(count // classes + (label < count % classes))]\n"
    "samples, test = folder('train', train_n), folder('val', test_n)\n"
    "val = np.arange(0, train_n, train_n // 3000)[:3000]\n"
    "train = np.setdiff1d(np.arange(train_n), val, assume_unique=True)\n"
    "splits = [FileImages([samples[i] for i in train], None), FileImages([samples[i] for i in val], None),\n"
    "          FileImages(test, None)]\n"
    "del samples, test, train, val\n"
    "grown = rss() - before\n"
    # A loader worker is a fork: reading an entry writes its reference counts, which copies its page.
    "entries = splits[0].samples\n"
    f"read = np.random.RandomState(0).permutation(len(entries))[: len(entries) // {SHARE}].tolist()\n"
    "reader, writer = os.pipe()\n"
    "if os.fork() == 0:\n"
    "    base = private()\n"
    "    for i in read:\n"
    "        path, label = entries[i]\n"
    "    os.write(writer, str(private() - base).encode())\n"
    "    os._exit(0)\n"
    "os.close(writer)\n"
    "copied = int(os.read(reader, 64))\n"
    "os.wait()\n"
    "print(json.dumps({'examples': sum(len(s) for s in splits), 'bytes': grown, 'copied': copied}))\n"
)


def run_json(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600,
                         check=False)
    if out.returncode:
        raise SystemExit(f"measurement failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def private_bytes(pid: int) -> int:
    """Private_Clean + Private_Dirty of `pid`'s mappings, /dev/shm and memfd ones (handed-over batches) left out."""
    total, counted = 0, True
    try:
        with open(f"/proc/{pid}/smaps", encoding="utf-8") as handle:
            for line in handle:
                head = line.split(maxsplit=1)[0]
                if not head.endswith(":"):  # a mapping's first line: its address range, ..., its path
                    counted = not any(tag in line for tag in ("/dev/shm", "memfd:", "torch_"))
                elif counted and head in ("Private_Clean:", "Private_Dirty:"):
                    total += int(line.split()[1]) * 1024
    except OSError:  # the worker ended
        return 0
    return total


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def measure_worker(micro: int, workers: int, steps: int) -> dict:
    import torch

    from conadv_repro.data.datasets import build_data
    from conadv_repro.data.loader import train_micro_batches
    from conadv_repro.data.sampler import BatchPlan

    torch.set_num_threads(1)  # as in a loader worker
    spec = importlib.util.spec_from_file_location("loader_benchmark", REPO / "benchmarks" / "loader.py")
    loader_benchmark = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = loader_benchmark  # its dataclasses look their module up there
    spec.loader.exec_module(loader_benchmark)
    with tempfile.TemporaryDirectory(prefix="host-memory-") as folder:
        root = Path(folder)
        built = loader_benchmark.build_folder(root, -(-2 * micro // loader_benchmark.CLASSES))
        bundle = build_data("imagenet", root=str(root), image_size=224, seed=0)
        plan = BatchPlan(bundle.num_train, micro, seed=0, dataset="imagenet")
        peaks: dict[int, int] = {}
        done = threading.Event()

        def sample() -> None:  # while the workers decode, not only between batches
            while not done.is_set():
                for pid in children(os.getpid()):
                    peaks[pid] = max(peaks.get(pid, 0), private_bytes(pid))
                time.sleep(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        taken = 0
        for _ in train_micro_batches(bundle, plan, start_step=0, end_step=steps, micro_size=micro,
                                     workers=workers, normalise_on_device=True):
            taken += 1
        done.set()
        sampler.join()
    return {"micro_batches": taken, "files": built["files"], "peak_private_bytes": max(peaks.values(), default=0),
            "workers_seen": len(peaks)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--micro", type=int, default=256, help="images per micro-batch (the paper scale's: 256)")
    parser.add_argument("--workers", type=int, default=2, help="loader workers")
    parser.add_argument("--steps", type=int, default=6, help="micro-batches to take")
    args = parser.parse_args(argv)
    import torch
    import torchvision

    from conadv_repro.machine import cpu_name

    print(f"machine: {cpu_name()}, {os.cpu_count()} cores; Python {sys.version.split()[0]}, torch "
          f"{torch.__version__}, torchvision {torchvision.__version__}")
    imports = run_json(IMPORTS)
    print(f"process: VmRSS after import torch, torchvision {imports['torch_torchvision'] / MIB:,.0f} MiB; "
          f"after the training code too {imports['training_code'] / MIB:,.0f} MiB")
    index = run_json(INDEX)
    print(f"index: {index['examples']:,} examples, {index['bytes'] / MIB:,.0f} MiB, "
          f"{index['bytes'] / index['examples']:,.0f} bytes per example; a forked process that reads a random "
          f"1/{SHARE} of the train entries copies {index['copied'] / MIB:,.0f} MiB of it")
    worker = measure_worker(args.micro, args.workers, args.steps)
    own = worker["peak_private_bytes"] - args.micro * 3 * 224 * 224  # the uint8 images, before they are stacked
    print(f"worker: peak private memory {worker['peak_private_bytes'] / MIB:,.0f} MiB over {worker['workers_seen']} "
          f"workers, {worker['micro_batches']} uint8 micro-batches of {args.micro} at 224 px from "
          f"{worker['files']} JPEGs; less the batch of images it assembles "
          f"({args.micro * 3 * 224 * 224 / MIB:,.1f} MiB): {own / MIB:,.0f} MiB of its own")
    return 0


if __name__ == "__main__":
    sys.exit(main())
