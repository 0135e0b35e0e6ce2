"""Optional compiled backend of :func:`tiltrl.agents.learn` (``pip install tiltrl[fast]``).

One jitted call runs a block of steps of all ``K`` seeds on a :class:`MDPSampler`: the
behaviour action, the next-state draw and the learner's update, with the uniforms drawn by
the numpy driver (``u`` of shape ``(n, 3, K)``, the same random stream). The seeds are
independent within a block (their table entries never collide), so the kernel loops over
seeds outside and steps inside. Every number is computed by the floating-point operations
of the numpy path in the same order (the same ``exp``/``log``/``log1p`` of the C library,
``numpy``'s ``logaddexp``, ``maximum``/``minimum`` and ``sign`` written out), so the tables
are bit-identical to the numpy backend (``tests/test_agents.py`` checks this) wherever
numpy's array ``exp``/``log`` are the C library's. On CPUs with AVX-512 numpy dispatches its
own SIMD ``exp``/``log``, which differ in the last bit for a few per cent of arguments; the
tables then agree to a few ulps (the same draws, so the same trajectories).

Block boundaries are set by the driver: a bounded learner's bounds refresh and a
U-learner's normalisation happen at the end of a block, exactly at the update where the
numpy path does them. A bounded learner's given-model refresh is done inside the kernel,
for each seed right after its steps while its table is in cache (the seeds' bounds are
independent): :func:`_refresh_seed` does the operations of the numpy refresh in the same
order, so the bounds are bit-identical; it keeps the soft values of the table's columns
and recomputes only those whose bits changed, and writes the bounds in place. This module
imports numba; ``import tiltrl`` never imports it.
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


@numba.njit(cache=True, inline="always")
def _soft_weights(flat, col, KS, A, scale, lpT, s, x, e):
    """Behaviour logits ``x[j] = scale Q[j, s] + log pi0(j|s)`` of one state (``col`` its
    position in the flat table), ``e[j] = exp(x[j] - max x)``; returns ``(max x, sum e)``.
    """
    for j in range(A):
        xv = flat[j * KS + col]
        if scale != 1.0:
            xv *= scale
        xv += lpT[j, s]
        x[j] = xv
    m = x[0]
    for j in range(1, A):
        m = _maximum(m, x[j])
    zz = 0.0
    for j in range(A):
        d = x[j] - m
        ej = 1.0 if d == 0.0 else math.exp(d)  # exp(+-0) is exactly 1
        e[j] = ej
        zz = ej if j == 0 else zz + ej
    return m, zz


@numba.njit(cache=True)
def _kernel(u, s_arr, e_arr, z_arr, flat, lpT, scale,  # noqa: C901
            soft, epsilon, cum_prior_T,
            start, thresholds, use_th, keys, last, nxt, reward,
            algo, beta, gamma, decay, lr, visits, alpha_tab, log_a, log1m_a, n_upd0,
            theta, eta, fixed, log_lr, log1m_lr,
            lb, ub, clip, clip_w, use_counts, nvis, rsum, nextc,
            refresh, q_bits, lp_m, rew_m, indptr, indices, data, b_scale, v_cache, v_bits,
            v_ok, tq):
    n = u.shape[0]
    K = s_arr.shape[0]
    A = flat.shape[0] // (K * lpT.shape[1])
    S = lpT.shape[1]
    KS = K * S
    n_th = thresholds.shape[0]
    x = np.empty(A)
    e = np.empty(A)
    n_clipped = 0
    crossed = 0
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
            m, zz = _soft_weights(flat, base + s2, KS, A, scale, lpT, s2, x, e)
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
        if refresh:
            # the bounds refresh after the block's last update, for this seed while its
            # table is in cache (seeds are independent), then fresh behaviour weights of
            # its state, as the numpy learner returns after a refresh
            c = _refresh_seed(k, flat, q_bits, K, S, lp_m, rew_m, beta, gamma, b_scale,
                              indptr, indices, data, lb, ub, v_cache, v_bits, v_ok, tq)
            if c < 0:
                return n_clipped, -1
            crossed += c
            m, z = _soft_weights(flat, base + s, KS, A, scale, lpT, s, x, e)
        s_arr[k] = s
        z_arr[k] = z
        for j in range(A):
            e_arr[j, k] = e[j]
        theta[k] = th_k
    return n_clipped, crossed


_EXP_MASK = np.int64(0x7FF0000000000000)  # an IEEE double is finite iff these bits are not all set


@numba.njit(cache=True)
def _refresh_seed(k, q, q_bits, K, S, lp, rew, beta, gamma, scale, indptr, indices, data,
                  lb, ub, v, v_bits, v_ok, tq):  # noqa: C901
    """``BoundedSoftQLearner._refresh_in_layout`` (given model) for seed ``k`` of the flat
    ``(A, K*S)`` table ``q``: the same operations in the same order for every entry (action
    sums as numpy's ``axis=0`` reduction, each ``P`` row summed in index order from ``0.0``
    as scipy's CSR mat-vec, the seed's residual extremes over its pairs in ``(s, a)``
    order), so bit-identical bounds. Writes the seed's ``lb``/``ub`` entries (not when its
    ``Q`` is not finite); returns its number of crossings, or -1 if its ``Q`` is not finite.

    ``q_bits`` is ``q`` viewed as int64; ``lp``, ``rew`` are ``log pi0`` and ``r`` of the
    model as ``(A, S)``; ``v`` (``(K, S)``), ``v_bits`` (like ``q_bits``) and ``v_ok``
    (``(K*S,)``) are a cache of soft values, the bits of the ``Q`` column each came from and
    their validity: a column with the same bits has the same, finite, value and is not
    recomputed; ``tq`` is scratch of ``S*A`` floats."""
    A = lp.shape[0]
    KS = K * S
    base = k * S
    vk = v[k]
    # ---------------------------------------------------------------- soft values V(s)
    for s in range(S):
        j = base + s
        same = v_ok[j]
        for a in range(A):
            b = q_bits[a * KS + j]
            if b != v_bits[a * KS + j]:
                same = False
                v_bits[a * KS + j] = b
        if same:
            continue
        for a in range(A):
            if (q_bits[a * KS + j] & _EXP_MASK) == _EXP_MASK:  # inf or nan
                v_ok[j] = False
                return -1
        m = -np.inf
        for a in range(A):
            m = _maximum(m, lp[a, s] + beta * q[a * KS + j])
        if not np.isfinite(m):
            m = 0.0
        tot = 0.0
        for a in range(A):
            d = (lp[a, s] + beta * q[a * KS + j]) - m
            ea = 1.0 if d == 0.0 else math.exp(d)  # exp(+-0) is exactly 1
            tot = ea if a == 0 else tot + ea
        vk[s] = (math.log(tot) + m) / beta if tot > 0.0 else (-np.inf + m) / beta
        v_ok[j] = True
    # ---------------------------------------------------------------- TQ = r + gamma P V
    d_min = np.inf
    d_max = -np.inf
    for s in range(S):
        j = base + s
        for a in range(A):
            row = s * A + a
            y = 0.0
            for jj in range(indptr[row], indptr[row + 1]):
                y += data[jj] * vk[indices[jj]]
            t = rew[a, s] + gamma * y
            tq[row] = t
            resid = t - q[a * KS + j]
            if np.isfinite(resid):
                d_min = _minimum(d_min, resid)
                d_max = _maximum(d_max, resid)
    if d_min == np.inf:  # no valid entry (a valid residual is finite)
        d_min = np.nan
        d_max = np.nan
    # ---------------------------------------------------------------- bounds
    crossed = 0
    for a in range(A):
        for s in range(S):
            i = a * KS + base + s
            t = tq[s * A + a]
            if np.isfinite(t - q[i]):
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


@numba.njit(cache=True)
def _refresh_all(q, q_bits, K, S, lp, rew, beta, gamma, scale, indptr, indices, data,
                 lb, ub, v, v_bits, v_ok, tq):
    crossed = 0
    for k in range(K):
        c = _refresh_seed(k, q, q_bits, K, S, lp, rew, beta, gamma, scale, indptr, indices,
                          data, lb, ub, v, v_bits, v_ok, tq)
        if c < 0:
            return -1
        crossed += c
    return crossed


def _refresh_state(learner: BoundedSoftQLearner) -> tuple[Any, ...]:
    """The model arrays, the soft-value cache and the scratch of the jitted given-model
    refresh (kept on the learner)."""
    st = getattr(learner, "_numba_refresh", None)
    if st is None:
        model = learner._model
        assert model is not None
        A, K, S = learner.A, learner.K, learner.S
        with np.errstate(divide="ignore"):
            lp = np.log(np.asarray(model.prior, dtype=np.float64))
        P = model.P
        # the kernel's argument order: lp, rew, indptr, indices, data, scale, v, v_bits,
        # v_ok, tq
        st = (np.ascontiguousarray(lp.T),
              np.ascontiguousarray(np.asarray(model.reward, dtype=np.float64).T),
              np.ascontiguousarray(P.indptr, dtype=np.int64),
              np.ascontiguousarray(P.indices, dtype=np.int64),
              np.ascontiguousarray(P.data, dtype=np.float64),
              learner.gamma / (1.0 - learner.gamma),
              np.empty((K, S)), np.zeros(A * K * S, dtype=np.int64),
              np.zeros(K * S, dtype=np.bool_), np.empty(S * A))
        learner._numba_refresh = st  # type: ignore[attr-defined]
    return st


def _own_bounds(learner: BoundedSoftQLearner) -> tuple[np.ndarray, np.ndarray]:
    """``learner.lb``/``ub`` as writable contiguous float64 arrays (rebound if copied)."""
    for name in ("lb", "ub"):
        arr = getattr(learner, name)
        if not (arr.dtype == np.float64 and arr.flags.c_contiguous and arr.flags.writeable
                and arr.flags.owndata):
            setattr(learner, name, np.array(arr, dtype=np.float64))
    return learner.lb, learner.ub


def _uses_jitted_refresh(learner: TabularLearner) -> bool:
    return (isinstance(learner, BoundedSoftQLearner) and learner.bounds_kind == "residual"
            and learner._model is not None)


def refresh_bounds(learner: BoundedSoftQLearner) -> None:
    """:meth:`BoundedSoftQLearner.refresh_bounds` with the given-model refresh jitted
    (bit-identical bounds); other bound kinds use the learner's own method.

    The bounds are written in place into ``learner.lb``/``ub`` (like the table, they are
    the learner's state), after ``Q`` is checked to be finite."""
    if not _uses_jitted_refresh(learner):
        learner.refresh_bounds()
        return
    q = learner._flat
    if not np.all(np.isfinite(q)):
        raise ValueError("Q has non-finite entries")
    lb, ub = _own_bounds(learner)
    lp, rew, indptr, indices, data, scale, v, v_bits, v_ok, tq = _refresh_state(learner)
    crossed = _refresh_all(q, q.view(np.int64), learner.K, learner.S, lp, rew,
                           float(learner.beta), float(learner.gamma), scale, indptr, indices,
                           data, lb, ub, v, v_bits, v_ok, tq)
    learner.crossed += int(crossed)


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
#: the refresh arguments of the kernel when it does not refresh (same types, empty)
_NO_REFRESH = (np.empty((0, 0)), np.empty((0, 0)), _EMPTY_I, _EMPTY_I, _EMPTY_F, 0.0,
               np.empty((0, 0)), _EMPTY_I, np.empty(0, dtype=np.bool_), _EMPTY_F)


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
    # a given-model bounds refresh after the block's last update is done in the kernel
    refresh = (isinstance(learner, BoundedSoftQLearner)
               and (learner.n_updates + n) % learner.bounds_every == 0
               and _uses_jitted_refresh(learner))
    if refresh:
        assert isinstance(learner, BoundedSoftQLearner)
        lb, ub = _own_bounds(learner)
        ref: tuple[Any, ...] = _refresh_state(learner)
    else:
        ref = _NO_REFRESH
    q_bits = learner._flat.view(np.int64)
    n_clipped, crossed = _kernel(
        u, s, e, z, learner._flat, learner._lpT, float(learner._scale),
        soft, float(epsilon), cum_prior_T,
        start, thr, use_th, keys, last, nxt, reward,
        algo, learner.beta, float(gamma), decay, float(step.lr), visits, alpha_tab, log_a,
        log1m_a, learner.n_updates, theta, float(eta), fixed, log_lr, log1m_lr,
        lb, ub, clip, float(clip_w), use_counts, nvis, rsum, nextc,
        refresh, q_bits, *ref,
    )
    learner.n_updates += n
    if isinstance(learner, BoundedSoftQLearner):
        learner.n_clipped += int(n_clipped)
        if refresh:
            if crossed < 0:
                raise ValueError("Q has non-finite entries")
            learner.crossed += int(crossed)
        elif learner.n_updates % learner.bounds_every == 0:
            learner.refresh_bounds()
            e, z = learner.behaviour_weights(s)
    elif isinstance(learner, ULearner):
        if learner.n_updates % learner.normalise_every == 0:
            learner.normalise()
    return s, e, z
