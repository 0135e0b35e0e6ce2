"""Support graph of a tabular model: reachability and strongly connected classes.

The Perron root of a reducible non-negative matrix is the largest root over its
strongly connected classes (Berman & Plemmons, *Nonnegative Matrices in the
Mathematical Sciences*, ch. 2). The solvers use these helpers to find the class the
agent actually lives in (DESIGN.md §3) instead of letting unreachable or transient
blocks hijack the root.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.sparse import csgraph

__all__ = ["ClassStructure", "class_structure", "reachable_from", "can_reach"]


def reachable_from(adjacency: sp.csr_matrix, sources: np.ndarray) -> np.ndarray:
    """Boolean mask of nodes reachable from ``sources`` (sources included)."""
    n = adjacency.shape[0]
    src = np.flatnonzero(sources) if sources.dtype == bool else np.asarray(sources)
    # one extra node wired to every source turns a multi-source search into one BFS
    extra = sp.csr_matrix(
        (np.ones(src.size), (np.full(src.size, n), src)), shape=(n + 1, n + 1)
    )
    graph = sp.bmat([[adjacency, None], [None, sp.csr_matrix((1, 1))]], format="csr") + extra
    order = csgraph.breadth_first_order(graph, n, directed=True, return_predecessors=False)
    mask = np.zeros(n + 1, dtype=bool)
    mask[order] = True
    return mask[:n]


def can_reach(adjacency: sp.csr_matrix, targets: np.ndarray) -> np.ndarray:
    """Boolean mask of nodes from which some node of ``targets`` can be reached."""
    return reachable_from(sp.csr_matrix(adjacency.T), targets)


@dataclass(frozen=True)
class ClassStructure:
    """Strongly connected classes of the support graph restricted to ``nodes``.

    ``labels[i]`` is the class of ``nodes[i]``; ``nontrivial[c]`` is True when class
    ``c`` carries a cycle (size > 1 or a self-loop); ``closed[c]`` when no edge leaves it.
    """

    nodes: np.ndarray
    labels: np.ndarray
    n_classes: int
    nontrivial: np.ndarray
    closed: np.ndarray


def class_structure(adjacency: sp.csr_matrix, nodes: np.ndarray) -> ClassStructure:
    """Strongly connected classes of ``adjacency`` restricted to ``nodes`` (indices)."""
    sub = sp.csr_matrix(adjacency[nodes][:, nodes])
    n_classes, labels = csgraph.connected_components(sub, directed=True, connection="strong")
    coo = sub.tocoo()
    size = np.bincount(labels, minlength=n_classes)
    self_loop = np.zeros(n_classes, dtype=bool)
    same = labels[coo.row] == labels[coo.col]
    self_loop[labels[coo.row[(coo.row == coo.col)]]] = True
    nontrivial = (size > 1) | self_loop
    leaving = np.zeros(n_classes, dtype=bool)
    leaving[labels[coo.row[~same]]] = True
    return ClassStructure(
        nodes=np.asarray(nodes),
        labels=labels,
        n_classes=int(n_classes),
        nontrivial=nontrivial,
        closed=~leaving,
    )
