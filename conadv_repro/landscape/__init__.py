"""The paper's mechanism, measurable: how sharp is the minimum a run ended in?

`python -m conadv_repro.landscape RUN_DIR` measures a finished run's network (eval mode, main BN) on a
fixed sample of clean training examples and writes `landscape.json` into the run directory
(docs/landscape.md has the definitions). One job per module:

  hessian.py    Hessian-vector products, power iteration, Hutchinson's trace (PyHessian, Yao et al. 2020)
  sharpness.py  the scale-invariant forms: ASAM's diag(|w|) H diag(|w|), Keskar's epsilon-sharpness
  slices.py     1-D slices: filter-normalised direction (Li et al. 2018), the line between two runs
  objective.py  the measured function: which parameters, which loss, fp32 numerics
  settings.py   the settings and constants that decide the numbers (the key), the measures' names
  runs.py       a run directory: the checkpoint measured and its identity, --between's checks
  measure.py    the network and sample from a run directory, the measures in order, the entry
  store.py      landscape.json: one entry per key, reused when the key comes again
  cli.py        the command line
"""
