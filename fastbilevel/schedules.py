"""Action lists for ``kernels.unroll.run_schedule``: which iterates to keep,
which to recompute, in what order.

``reverse``: store all T points. ``truncated``: store the last K. ``recompute``:
keep only w_0, recompute w_t from it for every reverse step (UFO-BLO Alg. 5).
``checkpointed``: at most s snapshots, either on the optimal binomial schedule
(Griewank's revolve: the fewest recomputed steps for s snapshots) or every
⌈T/s⌉ steps with a ⌈T/s⌉-point segment buffer.
"""
import numpy as np
from numba import njit

from ._codes import (ADV, ADV_STORE, FINISH, INIT_ADJ, RESTORE, REV_BUF,  # noqa: F401
                     REV_STATE, SNAP)


class Schedule:
    """An action list and what it holds: ``nslots`` snapshots of the solver
    state and ``buf_len`` stored points."""

    def __init__(self, actions, nslots, buf_len):
        self.actions = np.asarray(actions, dtype=np.int64).reshape(-1, 2)
        self.nslots = nslots
        self.buf_len = buf_len

    def forward_steps(self):
        """Solver steps the schedule runs (gradient passes, INIT's step included)."""
        a = self.actions
        adv = a[(a[:, 0] == ADV) | (a[:, 0] == ADV_STORE), 1].sum()
        return int(adv + np.sum((a[:, 0] == INIT_ADJ) & (a[:, 1] == 1)))


def inner_only(T):
    """The inner loop alone: T steps, then f(w_T) (no reverse sweep)."""
    return Schedule([(ADV, T), (INIT_ADJ, 0)], 0, 0)


def reverse(T):
    return Schedule([(ADV_STORE, T), (INIT_ADJ, 0), (REV_BUF, T), (FINISH, 0)], 0, T)


def truncated(T, K):
    return Schedule([(ADV, T - K), (ADV_STORE, K), (INIT_ADJ, 0), (REV_BUF, K),
                     (FINISH, 0)], 0, K)


def recompute(T):
    if T == 0:
        return Schedule([(INIT_ADJ, 0), (FINISH, 0)], 0, 0)
    acts = [(SNAP, 0), (ADV, T - 1), (INIT_ADJ, 1), (REV_STATE, 0)]
    for t in range(T - 2, -1, -1):
        acts += [(RESTORE, 0), (ADV, t), (REV_STATE, 0)]
    acts.append((FINISH, 0))
    return Schedule(acts, 1, 0)


def uniform(T, s):
    """Snapshots every L = ⌈T/s⌉ steps; each segment is recomputed into an
    L-point buffer and reversed from it (the last segment is stored during
    the first sweep)."""
    if T == 0:
        return Schedule([(INIT_ADJ, 0), (FINISH, 0)], 0, 0)
    L = -(-T // s)
    starts = list(range(0, T, L))
    lens = [min(L, T - t0) for t0 in starts]
    acts = []
    for k, n in enumerate(lens[:-1]):
        acts += [(SNAP, k), (ADV, n)]
    acts += [(ADV_STORE, lens[-1]), (INIT_ADJ, 0), (REV_BUF, lens[-1])]
    for k in range(len(lens) - 2, -1, -1):
        acts += [(RESTORE, k), (ADV_STORE, lens[k]), (REV_BUF, lens[k])]
    acts.append((FINISH, 0))
    return Schedule(acts, len(lens) - 1, L)


@njit(cache=True)
def _binomial_costs(T, free):
    """cost[l, f]: fewest solver steps to reverse l steps whose first state is
    stored, with f more snapshot slots; split[l, f]: the best first advance."""
    cost = np.zeros((T + 1, free + 1), dtype=np.int64)
    split = np.zeros((T + 1, free + 1), dtype=np.int64)
    for l in range(2, T + 1):
        cost[l, 0] = l * (l - 1) // 2
    for f in range(1, free + 1):
        for l in range(2, T + 1):
            best = cost[l, f - 1]
            bk = 0
            for k in range(1, l):
                v = k + cost[l - k, f - 1] + cost[k, f]
                if v < best:
                    best = v
                    bk = k
            cost[l, f] = best
            split[l, f] = bk
    return cost, split


@njit(cache=True)
def revolve_cost(l, s):
    """Fewest solver steps to reverse l steps with s snapshots, the first
    holding the start (Griewank and Walther 2000): r·l − C(s+r, s+1), with r
    the least integer such that C(s+r, s) ≥ l. (Equal to the dynamic program
    ``_binomial_costs``, which the tests check.)"""
    if l <= 1:
        return 0
    if s <= 1:
        return l * (l - 1) // 2
    r = 0
    b = 1  # C(s + r, s)
    while b < l:
        r += 1
        b = b * (s + r) // r
    # C(s + r, s + 1) = C(s + r, s) · r / (s + 1)
    return r * l - b * r // (s + 1)


@njit(cache=True)
def _best_split(l, s):
    """The first advance k ≥ 1 of an optimal schedule for l ≥ 2 steps with
    s ≥ 2 snapshots (the first holding the start)."""
    best = -1
    bk = 1
    for k in range(1, l):
        v = k + revolve_cost(l - k, s - 1) + revolve_cost(k, s)
        if best < 0 or v < best:
            best = v
            bk = k
    return bk


def revolve(T, s):
    """The optimal binomial schedule with s snapshot slots (slot 0 holds w_0)."""
    if T == 0:
        return Schedule([(INIT_ADJ, 0), (FINISH, 0)], 0, 0)
    s = max(1, min(s, T))
    acts = [(SNAP, 0)]
    # explicit stack of (t0, t1, slot, free, first): reverse steps t1−1..t0
    # starting from S_{t0}, which is current and stored in ``slot``
    stack = [(0, T, 0, s - 1, True)]
    while stack:
        item = stack.pop()
        if item[0] == "restore":
            acts.append((RESTORE, item[1]))
            continue
        t0, t1, slot, f, first = item
        l = t1 - t0
        k = _best_split(l, f + 1) if (f > 0 and l > 1) else 0
        if l == 1:
            if first:
                acts.append((INIT_ADJ, 1))
            acts.append((REV_STATE, 0))
        elif k == 0:   # no free slot: recompute every point from the stored start
            for t in range(t1 - 1, t0 - 1, -1):
                acts += [(RESTORE, slot), (ADV, t - t0)]
                if first and t == t1 - 1:
                    acts.append((INIT_ADJ, 1))
                acts.append((REV_STATE, 0))
        else:
            new = slot + 1
            acts += [(ADV, k), (SNAP, new)]
            # LIFO: the right part first, then restore, then the left part
            stack.append((t0, t0 + k, slot, f, False))
            stack.append(("restore", slot))
            stack.append((t0 + k, t1, new, f - 1, first))
    acts.append((FINISH, 0))
    return Schedule(acts, s, 0)
