"""Multi-process runs through torch.distributed: the ranks' roles, the trainers' data parallelism, the
start-up handshake, and ConAdv's dedicated attack workers (see docs/architecture.md)."""
