"""Hit-decision math of the semantic cache: static thresholds and the verified adaptive rule.

Pure functions (numpy only), written from the vCache paper's equations:

* per entry, observations ``(s_i, y_i)``: ``s`` the similarity of a later prompt to the entry when the entry
  was its nearest neighbour, ``y = 1`` if the entry's response was judged correct for that prompt;
* a logistic model ``P(y=1 | s) = sigmoid(gamma * (s - t))`` fitted by maximum likelihood, with
  ``Var(t_hat)`` from the inverse Fisher information by the delta method. When the labels are separated the
  MLE does not exist; the fallback is Firth's bias-reduced estimate (finite, with the same variance formula);
* for a new prompt at similarity ``s``: for each ``eps`` on a grid, ``t'_eps = t_hat + z_{1-eps} sd(t_hat)``
  and ``alpha_eps = (1 - eps) * sigmoid(gamma * (s - t'_eps))`` lower-bounds ``P(correct)``; the exploit
  probability is ``min(1, delta / (1 - max_eps alpha_eps))`` so ``P(wrong response served) <= delta``
  (the "vcache" rule);
* the default "budget" rule is deterministic: ``r = 1 - alpha`` upper-bounds the lookup's P(wrong); a
  :class:`RiskBudget` exploits iff ``r`` lies under the hindsight cut of past risks and the risk spent so far
  plus ``r`` stays within ``delta`` times the lookups seen, so the expected error rate is <= ``delta``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

#: epsilon grid of the confidence bound on the threshold (vCache uses a fine grid in (0, 1)).
DEFAULT_EPS_GRID: tuple[float, ...] = tuple(float(e) for e in np.linspace(0.005, 0.5, 100))
_GAMMA_CAP = 1e4  # a slope above this is a step function at any float32 similarity resolution


@dataclass(frozen=True, slots=True)
class ThresholdFit:
    """A fitted logistic ``P(correct | s) = sigmoid(gamma (s - t))`` with the variance of ``t``."""

    gamma: float
    t: float
    var_t: float
    n: int  # real observations behind the fit (pseudo-observations excluded)
    separated: bool = False  # labels were separated: Firth fallback used
    contrast: float = 0.0  # contrast weight of the scores it was fitted on (see :func:`contrast_score`)

    @property
    def usable(self) -> bool:
        """True when the fit says higher similarity means more likely correct."""
        return self.gamma > 0 and math.isfinite(self.t) and math.isfinite(self.var_t) and self.var_t >= 0

    def to_list(self) -> list[float]:
        """Compact form for storage: ``[gamma, t, var_t, n, separated, contrast]``."""
        sep = 1.0 if self.separated else 0.0
        return [self.gamma, self.t, self.var_t, float(self.n), sep, self.contrast]

    @classmethod
    def from_list(cls, v: list[float]) -> ThresholdFit:
        """Inverse of :meth:`to_list` (a 5-element list is a fit on raw similarities, contrast 0)."""
        contrast = float(v[5]) if len(v) > 5 else 0.0
        return cls(float(v[0]), float(v[1]), float(v[2]), int(v[3]), bool(v[4]), contrast)


def contrast_score(s: float, competitor: float | None, weight: float) -> float:
    """The score the adaptive policy models: similarity minus ``weight`` x the closest competing answer's.

    ``competitor`` is the best similarity of a live entry of the same (namespace, scope) whose answer group
    differs from the nearest entry's (None: there is none; negative similarities count as 0). A prompt that
    sits as close to another answer as to its nearest entry's is ambiguous, whatever its similarity;
    ``weight`` 0 gives the plain similarity of the vCache paper.
    """
    return float(s) - weight * max(float(competitor or 0.0), 0.0)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def is_separated(s: np.ndarray, y: np.ndarray) -> bool:
    """True when a threshold on ``s`` splits the labels perfectly (the logistic MLE then diverges)."""
    pos, neg = s[y > 0.5], s[y <= 0.5]
    if pos.size == 0 or neg.size == 0:
        return True
    return bool(neg.max() <= pos.min() or pos.max() <= neg.min())


def _newton(
    x: np.ndarray, y: np.ndarray, w: np.ndarray, firth: bool, max_iter: int, tol: float
) -> tuple[np.ndarray, np.ndarray] | None:
    """Newton-Raphson for (a, b) in ``logit = a + b s``; returns (beta, inverse Fisher) or None."""
    design = np.stack([np.ones_like(x), x], axis=1)
    beta = np.zeros(2)

    def penalised_loglik(b: np.ndarray) -> float:
        eta = design @ b
        ll = float(np.sum(w * (y * eta - np.logaddexp(0.0, eta))))
        if firth:
            p = _sigmoid(eta)
            info = design.T @ (design * (w * p * (1 - p))[:, None])
            sign, logdet = np.linalg.slogdet(info)
            ll += 0.5 * logdet if sign > 0 else -np.inf
        return ll

    current = penalised_loglik(beta)
    for _ in range(max_iter):
        p = _sigmoid(design @ beta)
        wt = w * p * (1 - p)
        info = design.T @ (design * wt[:, None])
        try:
            inv = np.linalg.inv(info)
        except np.linalg.LinAlgError:
            return None
        resid = y - p
        if firth:
            h = wt * np.einsum("ij,jk,ik->i", design, inv, design)
            resid = resid + h * (0.5 - p) / np.maximum(w, 1e-12)
        step = inv @ (design.T @ (w * resid))
        # step halving keeps the (penalised) likelihood increasing
        for _half in range(30):
            cand = beta + step
            val = penalised_loglik(cand)
            if val >= current - 1e-12:
                break
            step = step / 2
        beta, current = cand, val
        if float(np.max(np.abs(step))) < tol:
            break
        if abs(beta[1]) > _GAMMA_CAP:
            break
    p = _sigmoid(design @ beta)
    info = design.T @ (design * (w * p * (1 - p))[:, None])
    try:
        return beta, np.linalg.inv(info)
    except np.linalg.LinAlgError:
        return None


def fit_threshold(
    s: np.ndarray | list[float],
    y: np.ndarray | list[float],
    *,
    weights: np.ndarray | None = None,
    pseudo: bool = True,
    max_iter: int = 50,
    tol: float = 1e-9,
) -> ThresholdFit | None:
    """Fit ``P(y=1|s) = sigmoid(gamma (s - t))`` by MLE (Firth when separated); None if it cannot.

    ``pseudo`` adds the two anchoring pseudo-observations (s=0, y=0) and (s=1, y=1).
    """
    s_arr = np.asarray(s, dtype=np.float64).ravel()
    y_arr = np.asarray(y, dtype=np.float64).ravel()
    if s_arr.shape != y_arr.shape:
        raise ValueError("s and y must have the same length")
    n = int(s_arr.size)
    w_arr = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    if pseudo:
        s_arr = np.concatenate([s_arr, [0.0, 1.0]])
        y_arr = np.concatenate([y_arr, [0.0, 1.0]])
        w_arr = np.concatenate([w_arr, [1.0, 1.0]])
    if s_arr.size < 2 or float(np.ptp(s_arr)) <= 0:
        return None
    separated = is_separated(s_arr, y_arr)
    out = _newton(s_arr, y_arr, w_arr, separated, max_iter, tol)
    if out is None:
        return None
    (a, b), cov = out
    if not (math.isfinite(a) and math.isfinite(b)) or b == 0:
        return None
    t = -a / b
    grad = np.array([-1.0 / b, a / (b * b)])  # d t / d(a, b)
    var_t = float(grad @ cov @ grad)
    return ThresholdFit(gamma=float(b), t=float(t), var_t=max(var_t, 0.0), n=n, separated=separated)


def fit_with_prior(
    s: np.ndarray,
    y: np.ndarray,
    prior_s: np.ndarray,
    prior_y: np.ndarray,
    prior_weight: float,
) -> ThresholdFit | None:
    """Fit a group's ``(s, y)`` with the pooled sample as pseudo-data of total weight ``prior_weight``.

    The pooled sample shrinks a small group's fit (and its variance) towards the namespace's; ``n`` of the
    result counts the group's own observations only.
    """
    if prior_weight <= 0 or prior_s.size == 0:
        return fit_threshold(s, y)
    w = np.concatenate([np.full(prior_s.size, prior_weight / prior_s.size), np.ones(s.size)])
    fit = fit_threshold(np.concatenate([prior_s, s]), np.concatenate([prior_y, y]), weights=w)
    if fit is None:
        return None
    return ThresholdFit(fit.gamma, fit.t, fit.var_t, int(s.size), fit.separated)


class VerifiedPolicy:
    """The adaptive decision: exploit with probability ``min(1, delta / (1 - alpha))``."""

    def __init__(self, eps_grid: tuple[float, ...] = DEFAULT_EPS_GRID) -> None:
        eps = np.asarray(eps_grid, dtype=np.float64)
        if eps.size == 0 or np.any(eps <= 0) or np.any(eps >= 1):
            raise ValueError("eps grid values must lie in (0, 1)")
        self.eps = eps
        self.one_minus_eps = 1.0 - eps
        self.z = np.array([NormalDist().inv_cdf(1.0 - e) for e in eps])

    def correct_lower_bound(self, s: float, fit: ThresholdFit | None) -> float:
        """``max_eps (1-eps) sigmoid(gamma (s - t_hat - z_{1-eps} sd))``: a lower bound on P(correct)."""
        if fit is None or not fit.usable:
            return 0.0
        t_upper = fit.t + self.z * math.sqrt(fit.var_t)
        alpha = self.one_minus_eps * _sigmoid(fit.gamma * (s - t_upper))
        return float(alpha.max())

    def exploit_probability(self, s: float, fit: ThresholdFit | None, delta: float) -> float:
        """Probability of serving the cached response so that P(wrong served) <= ``delta``."""
        if not 0.0 < delta < 1.0:
            raise ValueError("delta must lie in (0, 1)")
        alpha = self.correct_lower_bound(s, fit)
        return min(1.0, delta / (1.0 - alpha)) if alpha < 1.0 else 1.0


#: risk histogram: bin 0 holds [0, 1e-4], then 512 geometric bins up to 1 (about 1.8 % wide each)
_RISK_EDGES = np.concatenate([[1e-4], np.geomspace(1e-4, 1.0, 513)[1:]])


class RiskBudget:
    """Budgeted deterministic exploit rule for one (namespace, delta) in one process.

    ``lookups`` counts every adaptive lookup, ``spent`` sums the risk bounds of the exploits, and a
    histogram holds the risks of past lookups that had a neighbour. Exploit iff ``risk <= cut`` and
    ``spent + risk <= delta * lookups``, where ``cut`` is the largest risk such that the past risks up to it
    sum to at most ``delta * lookups`` (the cut that would have been best in hindsight).
    """

    __slots__ = ("counts", "delta", "lookups", "spent", "sums")

    def __init__(self, delta: float) -> None:
        if not 0.0 < delta < 1.0:
            raise ValueError("delta must lie in (0, 1)")
        self.delta = delta
        self.lookups = 0
        self.spent = 0.0
        self.sums = np.zeros(_RISK_EDGES.size)  # sum of past risks per bin
        self.counts = np.zeros(_RISK_EDGES.size, dtype=np.int64)  # past risks per bin

    def cut(self) -> float:
        """Largest past risk (bin edge) whose cumulative past risk fits the budget; 0 when none does."""
        budget = self.delta * self.lookups
        cs = np.cumsum(self.sums)
        b = int(np.searchsorted(cs, budget, side="right"))  # bins whose risks all fit
        before = float(cs[b - 1]) if b else 0.0
        if b < cs.size and self.counts[b] and before + self.sums[b] / self.counts[b] <= budget:
            return float(_RISK_EDGES[b])  # part of the next bin fits too (ties of equal risks)
        seen = np.flatnonzero(self.counts[:b])
        return float(_RISK_EDGES[seen[-1]]) if seen.size else 0.0

    def decide(self, risk: float | None) -> bool:
        """Count one lookup (``risk`` None: no neighbour) and say whether to exploit it."""
        self.lookups += 1
        if risk is None:
            return False
        risk = min(max(float(risk), 0.0), 1.0)
        # risk 1 = no evidence at all (no fit): never served, whatever budget is left
        ok = risk < 1.0 and risk <= self.cut() and self.spent + risk <= self.delta * self.lookups
        b = int(np.searchsorted(_RISK_EDGES, risk, side="left"))
        self.sums[b] += risk
        self.counts[b] += 1
        if ok:
            self.spent += risk
        return ok


class BudgetBook:
    """The :class:`RiskBudget` of each (namespace, delta), least recently used dropped past ``capacity``."""

    def __init__(self, capacity: int = 4096) -> None:
        self.capacity = capacity
        self._book: OrderedDict[tuple[str, float], RiskBudget] = OrderedDict()

    def get(self, namespace: str, delta: float) -> RiskBudget:
        """The controller of (namespace, delta), created empty on first use."""
        key = (namespace, round(float(delta), 9))
        rb = self._book.get(key)
        if rb is None:
            rb = self._book[key] = RiskBudget(delta)
            while len(self._book) > self.capacity:
                self._book.popitem(last=False)
        else:
            self._book.move_to_end(key)
        return rb

    def drop_namespace(self, namespace: str) -> None:
        """Forget a deleted namespace's budgets."""
        for key in [k for k in self._book if k[0] == namespace]:
            del self._book[key]

    def __len__(self) -> int:
        return len(self._book)


def static_decision(s: float, threshold: float) -> bool:
    """The classic rule: reuse when similarity reaches a fixed threshold."""
    return s >= threshold
