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


def random_dense_mdp(S: int, A: int, seed: int):  # type: ignore[no-untyped-def]
    """A seeded ``TabularMDP`` with dense skewed transitions (``U^3``, normalised), a
    random prior and normal rewards: every pair reaches every state."""
    import tiltrl

    rng = np.random.default_rng(seed)
    P = rng.random((S, A, S)) ** 3
    P /= P.sum(axis=2, keepdims=True)
    prior = rng.random((S, A)) + 0.1
    prior /= prior.sum(axis=1, keepdims=True)
    return tiltrl.TabularMDP(P, rng.normal(size=(S, A)), prior)
