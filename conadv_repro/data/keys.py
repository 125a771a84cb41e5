"""Keyed seeds: one random stream per (use, run seed, epoch or step, example).

Every random draw that shapes training (the shuffle, an example's augmentation, the attack's noise) is
seeded from a tuple of integers such as (run seed, epoch, global example index, stream). Because the
seed depends only on what the draw is *for*, the numbers do not change with the number of loader
workers, the micro-batch size, the number of ranks, or where a run was resumed.

The hash is splitmix64 folded over the keys, in pure Python integers masked to 64 bits, so it is the
same on every platform and every version of numpy and torch.
"""

from __future__ import annotations

import operator

# Stream tags keep different uses of the same (seed, epoch, index) apart. Add new tags at the end and
# never renumber one: a renumbered tag silently changes every run that used it.
STREAM_SHUFFLE = 1
STREAM_AUGMENT = 2
STREAM_ATTACK = 3

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    """One splitmix64 step (Steele, Lea and Flood 2014): a bijection on 64-bit words with good avalanche."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def example_seed(*keys: int) -> int:
    """Return a deterministic seed in [0, 2**63) for the tuple `keys`.

    Negative keys are taken modulo 2**64 (two's complement), so any Python int is accepted. The seed
    is 63 bits so that it fits a signed int64 and every torch or numpy seeding function takes it.
    """
    # Starting from the length keeps (a,) and (a, 0) apart.
    state = _splitmix64(len(keys))
    for key in keys:
        # operator.index takes numpy and 0-d torch integers too, and refuses floats (whose rounding
        # would make two different keys collide).
        state = _splitmix64(state ^ (operator.index(key) & _MASK64))
    return state >> 1
