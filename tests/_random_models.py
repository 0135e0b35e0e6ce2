"""Random transition tensors shared by the property tests (imported as a plain module:
pytest puts ``tests/`` on ``sys.path``)."""

from __future__ import annotations

import numpy as np


def random_transitions(
    rng: np.random.Generator, S: int, A: int, deterministic: bool
) -> np.ndarray:
    """``P[s, a, s']``: one random successor per pair, or a Dirichlet law on a random support."""
    P = np.zeros((S, A, S))
    for s in range(S):
        for a in range(A):
            if deterministic:
                P[s, a, rng.integers(S)] = 1.0
            else:
                k = int(rng.integers(1, S + 1))
                support = rng.choice(S, size=k, replace=False)
                P[s, a, support] = rng.dirichlet(np.ones(k))
    return P
