"""`python -m conadv_repro.gpu_check`: one command that exercises every GPU path of the suite on a GPU.

Nothing else in the test suite runs on CUDA, so a user's first paper-scale job would be where an untested
path (ConAdv's side stream, bf16 autocast, channels_last, torch.compile, pinned loaders, NCCL) breaks.
This check runs them in a few minutes of one GPU, in sections (docs/gpu-check.md):

1. correctness: `deterministic` (stream executor = sequential, ConAdv tau=0 = DisAdv, a resume from a
   checkpoint written on the GPU = the uninterrupted run, bit for bit) and `fast` (every method with bf16
   autocast and channels_last, torch.compile, a pinned loader with workers);
2. `speed`: ResNet-50 at 224 px on synthetic data generated on the GPU, through the engine's step, beside a
   plain PyTorch + torchvision loop, with the suite's goals;
3. `calibration`: the one-GPU calibration file that `--estimate` reads;
4. `multi-gpu`: what one GPU cannot check (NCCL among ranks), and, with 2 or 3+ GPUs, the exactness
   runs on NCCL.

`--cpu-smoke` runs the same code shrunk on the CPU (tests/test_gpu_check.py), so that it cannot rot.
The modules import neither submitit nor wandb: the check runs on a GPU machine with only torch,
torchvision, numpy and scikit-learn.
"""
