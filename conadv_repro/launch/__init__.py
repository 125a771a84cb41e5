"""The launcher: the paper's grids (experiments/) expanded into runs and submitted through submitit."""
