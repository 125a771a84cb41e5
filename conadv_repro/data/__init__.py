"""The data layer: datasets with fixed splits, transform presets and a seeded, resumable sampler.

- `keys`: `example_seed` and the stream tags that key every random draw per example.
- `sampler`: `BatchPlan` (which examples each step trains on), `MicroBatchSampler`, `Lookahead`.
- `transforms`: the per-dataset presets (AutoAugment optional), `PairedTransform` and `keyed_call`.
- `sources`: the keyed train set and the eval sets over a split's raw images.
- `datasets`: `build_data` (`paired=True`: both views), `DataBundle`, the `DATASETS` registry.
- `loader`: `train_micro_batches` (DataLoader + look-ahead) and `eval_batches`.

Nothing is imported here, so that `keys` stays importable without torchvision.
"""
