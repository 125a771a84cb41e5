"""Where ConAdv's attack runs: beside the update on a worker thread or a side CUDA stream."""
