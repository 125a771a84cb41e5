"""The paper's experiments, one file per table or figure (see conadv_repro/registry.py)."""
