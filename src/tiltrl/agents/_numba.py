"""Optional compiled backend of :func:`tiltrl.agents.learn` (``pip install tiltrl[fast]``).

One jitted call runs a block of steps of all ``K`` seeds on a :class:`MDPSampler`: the
behaviour action, the next-state draw and the learner's update, with the uniforms drawn by
the numpy driver (``u`` of shape ``(n, 3, K)``, the same random stream). The seeds are
independent within a block (their table entries never collide), so the kernel loops over
seeds outside and steps inside. Every number is computed by the floating-point operations
of the numpy path in the same order (the same ``exp``/``log``/``log1p`` of the C library,
``numpy``'s ``logaddexp``, ``maximum``/``minimum`` and ``sign`` written out), so the tables
are bit-identical to the numpy backend (``tests/test_agents.py`` checks this).

Block boundaries are set by the driver: a bounded learner's bounds refresh and a
U-learner's normalisation happen between blocks, exactly at the update where the numpy
path does them; a bounded learner's given-model refresh is jitted too (:func:`refresh_bounds`,
the same operations in the same order as the numpy refresh, bit-identical bounds). This
module imports numba; ``import tiltrl`` never imports it.
"""

from __future__ import annotations

import math
from typing import Any

import numba
import numpy as np

from tiltrl.agents.base import TabularLearner
from tiltrl.agents.bounded import BoundedSoftQLearner
from tiltrl.agents.differential import DifferentialSoftQLearner
from tiltrl.agents.sampler import MDPSampler
from tiltrl.agents.soft_q import SoftQLearner
from tiltrl.agents.u_learning import ULearner

__all__ = ["supported", "run_block", "block_limit"]

_LOGE2 = 0.693147180559945309417232121458176568

# algorithm codes
_SOFT_Q, _BOUNDED, _U, _DIFF = 0, 1, 2, 3
_DECAYS = {"constant": 0, "visits": 1, "steps": 2}
_CLIPS = {"hard": 0, "linear": 1, "square": 2, "huber": 3}


@numba.njit(cache=True)
def _logaddexp(x: float, y: float) -> float:  # numpy's npy_logaddexp
    if x == y:
        return x + _LOGE2
    tmp = x - y
    if tmp > 0:
        return x + math.log1p(math.exp(-tmp))
    elif tmp <= 0:
        return y + math.log1p(math.exp(tmp))
    return tmp


@numba.njit(cache=True)
def _maximum(a: float, b: float) -> float:  # np.maximum
    return a if (a >= b or a != a) else b


@numba.njit(cache=True)
def _minimum(a: float, b: float) -> float:  # np.minimum
    return a if (a <= b or a != a) else b


@numba.njit(cache=True)
def _kernel(u, s_arr, e_arr, z_arr, flat, lpT, scale,  # noqa: C901
            soft, epsilon, cum_prior_T,
            start, thresholds, use_th, keys, last, nxt, reward,
            algo, beta, gamma, decay, lr, visits, alpha_tab, log_a, log1m_a, n_upd0,
            theta, eta, fixed, log_lr, log1m_lr,
            lb, ub, clip, clip_w, use_counts, nvis, rsum, nextc):
    n = u.shape[0]
    K = s_arr.shape[0]
    A = flat.shape[0] // (K * lpT.shape[1])
    S = lpT.shape[1]
    KS = K * S
    n_th = thresholds.shape[0]
    x = np.empty(A)
    e = np.empty(A)
    n_clipped = 0
    for k in range(K):
        s = s_arr[k]
        z = z_arr[k]
        for j in range(A):
            e[j] = e_arr[j, k]
        th_k = theta[k]
        base = k * S
        for i in range(n):
            u0 = u[i, 0, k]
            # ---------------------------------------------------------- action
            if soft:
                t = u0 * z
                c = e[0]
                a = 1 if (A > 1 and c < t) else 0
                for j in range(1, A - 1):
                    c += e[j]
                    if c < t:
                        a += 1
                if epsilon > 0.0 and u[i, 2, k] < epsilon:
                    a = 0
                    for j in range(A - 1):
                        if cum_prior_T[j, s] < u0:
                            a += 1
            else:
                a = 0
                for j in range(A - 1):
                    if cum_prior_T[j, s] < u0:
                        a += 1
            # ---------------------------------------------------------- next state
            row = s * A + a
            key = row + u[i, 1, k]
            if use_th:
                idx = start[row]
                for j in range(n_th):
                    if thresholds[j, row] <= key:
                        idx += 1
            else:
                idx = np.searchsorted(keys, key, side="right")
                if idx > last[row]:
                    idx = last[row]
            s2 = nxt[idx]
            r = reward[idx]
            # ---------------------------------------------------------- soft next value
            col = base + s2
            for j in range(A):
                xv = flat[j * KS + col]
                if scale != 1.0:
                    xv *= scale
                xv += lpT[j, s2]
                x[j] = xv
            m = x[0]
            for j in range(1, A):
                m = _maximum(m, x[j])
            zz = 0.0
            for j in range(A):
                e[j] = math.exp(x[j] - m)
                zz = e[j] if j == 0 else zz + e[j]
            # ---------------------------------------------------------- step size
            fi = a * KS + base + s
            if decay == 1:
                nv = visits[fi]
                visits[fi] = nv + 1
                alpha = alpha_tab[nv]
            elif decay == 2:
                nv = n_upd0 + i
                alpha = alpha_tab[nv]
            else:
                nv = 0
                alpha = lr
            q_sa = flat[fi]
            # ---------------------------------------------------------- update
            if algo == _SOFT_Q or algo == _BOUNDED:
                v = math.log(zz)
                v += m
                v /= beta
                v *= gamma
                v += r
                if algo == _SOFT_Q:
                    step = alpha * (v - q_sa)
                else:
                    if use_counts:
                        pair = (base + s) * A + a
                        nvis[pair] += 1.0
                        rsum[pair] += r
                        nextc[pair * S + s2] += 1.0
                    lo = lb[fi]
                    hi = ub[fi]
                    if clip == 0:
                        yc = _minimum(_maximum(v, lo), hi)
                        if yc != v:
                            n_clipped += 1
                        step = alpha * (yc - q_sa)
                    else:
                        err = _minimum(_maximum(q_sa, lo), hi) - q_sa
                        if err != 0:
                            n_clipped += 1
                        if clip == 1:
                            if err > 0:
                                g = 1.0
                            elif err < 0:
                                g = -1.0
                            elif err == 0:
                                g = 0.0
                            else:
                                g = err
                        elif clip == 2:
                            g = err
                        else:
                            g = _minimum(_maximum(err, -1.0), 1.0)
                        step = alpha * ((v - q_sa) + clip_w * g)
            elif algo == _DIFF:
                step = alpha * (r - th_k + (m + math.log(zz)) / beta - q_sa)
                th_k += eta * step
            else:
                delta = beta * r + (m + math.log(zz)) - th_k - q_sa
                if fixed:
                    step = alpha * delta
                elif decay == 1:
                    step = _logaddexp(log1m_a[nv], log_a[nv] + delta)
                elif alpha == 1.0:
                    step = delta
                else:
                    step = _logaddexp(log1m_lr, log_lr + delta)
                th_k += eta * step
            flat[fi] = q_sa + step
            # ---------------------------------------------------------- patch
            if s2 == s:
                st = step
                if scale != 1.0:
                    st = scale * st
                old = e[a]
                new = math.exp(x[a] + st - m)
                e[a] = new
                zz += new - old
            z = zz
            s = s2
        s_arr[k] = s
        z_arr[k] = z
        for j in range(A):
            e_arr[j, k] = e[j]
        theta[k] = th_k
    return n_clipped


@numba.njit(cache=True)
def _refresh_given(q, lp_cols, r_cols, beta, gamma, scale, indptr, indices, data,
                   K, S, lb, ub, q_bits, v, v_bits, v_ok):  # noqa: C901
    """``BoundedSoftQLearner._refresh_in_layout`` (given model) in the ``(A, K*S)`` layout:
    the same operations in the same order (action sums row by row as numpy's ``axis=0``
    reduction, each ``P`` row summed in index order from ``0.0`` as scipy's CSR mat-vec).
    Writes ``lb``/``ub``; returns the number of crossings, or -1 if ``q`` is not finite.
    ``q_bits`` is ``q`` viewed as int64; ``v``, ``v_bits``, ``v_ok`` are the learner's cache
    of soft values (``(S, K)``), the bits of the ``Q`` they came from and their validity."""
    A = q.shape[0]
    KS = K * S
    for a in range(A):
        for j in range(KS):
            if not np.isfinite(q[a, j]):
                return -1
    # v[s, k]: the (S, K) right-hand side of scipy's P @ V, kept between calls with the
    # bits of the Q column it came from; a column with the same bits has the same value
    x = np.empty(A)
    for k in range(K):
        for s in range(S):
            j = k * S + s
            same = v_ok[j]
            for a in range(A):
                if q_bits[a, j] != v_bits[a, j]:
                    same = False
                    v_bits[a, j] = q_bits[a, j]
            if same:
                continue
            v_ok[j] = True
            m = -np.inf
            for a in range(A):
                x[a] = lp_cols[a, j] + beta * q[a, j]
                m = _maximum(m, x[a])
            if not np.isfinite(m):
                m = 0.0
            tot = 0.0
            for a in range(A):
                d = x[a] - m
                ea = 1.0 if d == 0.0 else math.exp(d)  # exp(+-0) is exactly 1
                tot = ea if a == 0 else tot + ea
            v[s, k] = (math.log(tot) + m) / beta if tot > 0.0 else (-np.inf + m) / beta
    # scipy's csr_matvecs: y[row, :] += P[row, col] * v[col, :], entries in index order
    tq = np.zeros((S * A, K))
    for row in range(S * A):
        y = tq[row]
        for jj in range(indptr[row], indptr[row + 1]):
            p = data[jj]
            src = v[indices[jj]]
            for k in range(K):
                y[k] += p * src[k]
    crossed = 0
    for k in range(K):
        base = k * S
        d_min = np.inf
        d_max = -np.inf
        for s in range(S):
            j = base + s
            for a in range(A):
                t = r_cols[a, j] + gamma * tq[s * A + a, k]
                lb[a * KS + j] = t  # staged; finished below
                resid = t - q[a, j]
                if np.isfinite(resid):
                    d_min = _minimum(d_min, resid)
                    d_max = _maximum(d_max, resid)
        if d_min == np.inf:  # no valid entry (a valid residual is finite)
            d_min = np.nan
            d_max = np.nan
        for a in range(A):
            for s in range(S):
                i = a * KS + base + s
                t = lb[i]
                if np.isfinite(t - q[a, base + s]):
                    lo = t + scale * d_min
                    hi = t + scale * d_max
                else:
                    lo = -np.inf
                    hi = np.inf
                if lo > hi:
                    crossed += 1
                if lo <= hi:
                    lb[i] = lo
                    ub[i] = hi
                else:
                    lb[i] = -np.inf
                    ub[i] = np.inf
    return crossed


def refresh_bounds(learner: BoundedSoftQLearner) -> None:
    """:meth:`BoundedSoftQLearner.refresh_bounds` with the given-model refresh jitted
    (bit-identical bounds); other bound kinds use the learner's own method."""
    if learner.bounds_kind != "residual" or learner._model is None:
        learner.refresh_bounds()
        return
    lp_cols, r_cols = learner._layout_cache()
    P = learner._model.P
    A, K, S = learner.A, learner.K, learner.S
    lb = np.empty(A * K * S)
    ub = np.empty(A * K * S)
    cache = getattr(learner, "_numba_v_cache", None)
    if cache is None:
        cache = (np.empty((S, K)), np.zeros((A, K * S), dtype=np.int64),
                 np.zeros(K * S, dtype=np.bool_))
        learner._numba_v_cache = cache  # type: ignore[attr-defined]
    q = np.ascontiguousarray(learner.table)
    crossed = _refresh_given(q, lp_cols, r_cols, float(learner.beta),
                             float(learner.gamma), learner.gamma / (1.0 - learner.gamma),
                             P.indptr, P.indices, P.data, K, S, lb, ub,
                             q.view(np.int64), *cache)
    if crossed < 0:
        raise ValueError("Q has non-finite entries")
    learner.crossed += int(crossed)
    learner.lb, learner.ub = lb, ub


def supported(learner: TabularLearner, sampler: Any) -> bool:
    """Whether the compiled kernel covers this run (else the numpy path is used)."""
    if type(sampler) is not MDPSampler:
        return False
    if type(learner) not in (SoftQLearner, BoundedSoftQLearner, ULearner,
                             DifferentialSoftQLearner):
        return False
    # U-learning (controlled) with a global-step decay keeps the numpy path
    return not (isinstance(learner, ULearner) and learner.dynamics == "controlled"
                and learner.step_size.decay == "steps")


def block_limit(learner: TabularLearner) -> int | None:
    """Steps until the next between-block event (bounds refresh / normalisation)."""
    if isinstance(learner, BoundedSoftQLearner):
        return learner.bounds_every - learner.n_updates % learner.bounds_every
    if isinstance(learner, ULearner):
        return learner.normalise_every - learner.n_updates % learner.normalise_every
    return None


_EMPTY_F = np.empty(0)
_EMPTY_I = np.empty(0, dtype=np.int64)


def _sampler_arrays(sampler: MDPSampler) -> tuple[Any, ...]:
    cache = getattr(sampler, "_numba_arrays", None)
    if cache is None:
        th = sampler._thresholds
        use_th = th is not None
        rows = sampler._start.size
        thr = (np.ascontiguousarray(np.stack(th)) if th else np.empty((0, rows)))
        cache = (np.ascontiguousarray(sampler._start, dtype=np.int64), thr, use_th,
                 np.ascontiguousarray(sampler._keys, dtype=np.float64),
                 np.ascontiguousarray(sampler._last, dtype=np.int64),
                 np.ascontiguousarray(sampler._next, dtype=np.int64),
                 np.ascontiguousarray(sampler._reward, dtype=np.float64))
        sampler._numba_arrays = cache  # type: ignore[attr-defined]
    return cache


def run_block(learner: TabularLearner, sampler: MDPSampler, u: np.ndarray, s: np.ndarray,
              e: np.ndarray, z: np.ndarray, *, soft: bool, epsilon: float,
              cum_prior_T: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n = len(u)`` steps of all seeds; returns the new ``(s, e, z)``.

    ``n`` must not run past :func:`block_limit`; the event at the block's last update
    (bounds refresh, normalisation) is done here, as the numpy learner does it.
    """
    n = u.shape[0]
    s = np.array(s, dtype=np.int64)
    e = np.array(e, dtype=np.float64, order="C")
    z = np.array(z, dtype=np.float64)
    step = learner.step_size
    decay = _DECAYS[step.decay]
    visits = learner.visits if learner.visits is not None else _EMPTY_I
    alpha_tab = log_a = log1m_a = _EMPTY_F
    if decay == 1:
        need = int(visits.max(initial=0)) + n
        alpha_tab = learner._alpha_upto(need)
    elif decay == 2:
        alpha_tab = learner._alpha_upto(learner.n_updates + n)
    algo = _SOFT_Q
    theta = np.zeros(learner.K)
    eta = 0.0
    fixed = False
    log_lr = log1m_lr = 0.0
    gamma = 0.0
    lb = ub = nvis = rsum = nextc = _EMPTY_F
    clip, clip_w, use_counts = 0, 0.0, False
    if isinstance(learner, SoftQLearner):
        gamma = learner.gamma
    if isinstance(learner, BoundedSoftQLearner):
        algo = _BOUNDED
        lb, ub = np.ascontiguousarray(learner.lb), np.ascontiguousarray(learner.ub)
        clip, clip_w = _CLIPS[learner.clip], learner.clip_weight
        if learner._counts is not None:
            use_counts = True
            nvis, rsum, nextc = learner._nvis, learner._rsum, learner._next
    elif isinstance(learner, DifferentialSoftQLearner):
        algo, theta, eta = _DIFF, learner._theta, learner.eta
    elif isinstance(learner, ULearner):
        algo, theta, eta = _U, learner._lam, learner.eta
        fixed = learner.dynamics == "fixed"
        log_lr, log1m_lr = learner._log_lr, learner._log1m_lr
        if decay == 1 and not fixed:
            log_a, log1m_a = learner._log_alpha_tables(alpha_tab.size - 1)
    start, thr, use_th, keys, last, nxt, reward = _sampler_arrays(sampler)
    n_clipped = _kernel(
        u, s, e, z, learner._flat, learner._lpT, float(learner._scale),
        soft, float(epsilon), cum_prior_T,
        start, thr, use_th, keys, last, nxt, reward,
        algo, learner.beta, float(gamma), decay, float(step.lr), visits, alpha_tab, log_a,
        log1m_a, learner.n_updates, theta, float(eta), fixed, log_lr, log1m_lr,
        lb, ub, clip, float(clip_w), use_counts, nvis, rsum, nextc,
    )
    learner.n_updates += n
    if isinstance(learner, BoundedSoftQLearner):
        learner.n_clipped += int(n_clipped)
        if learner.n_updates % learner.bounds_every == 0:
            refresh_bounds(learner)
            e, z = learner.behaviour_weights(s)
    elif isinstance(learner, ULearner):
        if learner.n_updates % learner.normalise_every == 0:
            learner.normalise()
    return s, e, z
