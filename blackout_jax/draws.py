"""Exact count draws for the samplers: binomial and capped Poisson, by inversion.

Binomial (the bridge sampler). In a sampler step every count shares one success probability
``r``, and the number of trials is an integer in ``0..N``. The cumulative table
``F[n, k] = P(Binomial(n, r) <= k)`` for ``n, k = 0..N`` has only ``(N + 1)^2`` entries, so it is
built inside the step; each draw is then one uniform ``u`` and a binary search for the smallest
``k`` with ``F[n, k] > u``. That is the exact inverse-CDF method, up to float32 rounding of the
table. The search only spans ``0..c``, where ``c`` is the smallest ``k`` with
``F[n_max, k] > 1 - 2^-23`` for the largest ``n_max`` of the step (no uniform exceeds
``1 - 2^-23``, and ``F[n, k]`` falls with ``n``), so it takes ``ceil(log2(c + 1))`` gathers: one
or two in the many steps where ``r`` is tiny, at most ``ceil(log2(N + 1))`` (on a CPU; other
backends run the ``ceil(log2(N + 1))`` halvings unrolled, see :func:`_table_search`).

Capped Poisson (tau-leaping). A tau-leaping step needs ``min(Poisson(lam), c)`` with a rate
``lam = yhat r`` that differs from count to count and a cap ``c = N - n_t``. Two exact
methods, both inverting the upper tail ``P(X > k)`` with a uniform ``w`` made from all 32
random bits (:func:`fine_uniform`, resolution ``2^-32`` near 0), so that the frequent
decision "no birth" is accurate even for rates far below float32's resolution near 1:

* :func:`capped_poisson`, any rates: sequential inversion,
  ``X = min{k : w >= T_1 - G_k}`` with ``T_1 = P(X >= 1) = -expm1(-lam)``,
  ``G_k = sum_{j=1..k} p_j``, ``p_j = p_{j-1} lam / j``, ``p_0 = exp(-lam)``. All counts advance
  together in one ``lax.while_loop`` that stops when every count is resolved
  (``max(min(X, c)) + 1`` iterations). Rates above ``fallback_rate`` go to transformed
  rejection (PTRS, computed only in steps that have such rates).
* :func:`capped_poisson_scaled`, rates ``yhat r`` with one ``r`` per step (tau-leaping):
  ``Poisson((m + f) r) = Poisson(m r) + Poisson(f r)`` with ``m = floor(yhat)``, sums of
  independent Poisson draws being Poisson. The first term comes from a per-step
  ``(N + 1)^2`` table of tails ``P(Poisson(m r) > k)`` (``m, k = 0..N``) by a bounded binary
  search, the second (rate ``f r < r``) from the sequential inversion above. The cost no
  longer grows with the rate. Steps whose rates are all at most ``DEFAULT_DIRECT_RATE``
  (most steps of a long grid) skip the table and use the sequential inversion alone.

Large counts. Both tables have ``(N + 1)^2`` entries, so their cost grows with the square of
the static max count ``N``. Above ``TABLE_MAX_COUNT`` the samplers use draws whose cost does not
depend on ``N``: :func:`binomial` (sequential inversion for means below
``REJECTION_MIN_MEAN``, W. Hormann's BTRS rejection above) and :func:`capped_poisson` (the
sequential inversion above, PTRS rejection for large rates). The rejection methods are exact:
their acceptance tests use log-probabilities in saddle-point form
(:func:`binomial_log_pmf`, :func:`poisson_log_pmf`), accurate in float32 at any count, where
``lgamma`` differences lose about ``k log k * 6e-8`` (visible in ``jax.random.poisson`` at a
rate of 20,000).

Measured costs are in experiments/RESULTS.md (``experiments/benchmarks/performance.py``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

DEFAULT_FALLBACK_RATE = 10.0
"""Rates above this are drawn by rejection in :func:`capped_poisson`."""

DEFAULT_DIRECT_RATE = 1.0
"""Steps whose rates are all at most this skip the table in :func:`capped_poisson_scaled`."""

MAX_FALLBACK_RATE = 64.0
"""The largest allowed ``fallback_rate``: ``exp(-64)`` is far from float32 underflow."""

_TAIL_TOLERANCE = 2.0**-32
"""A draw stops at ``k`` once ``P(X > k)`` is provably below this (the uniform's resolution)."""

_UNROLLED_TERMS = 4
"""Terms of the sequential inversion written out before its loop (fastest on a CPU, measured)."""

_CUMSUM_BLOCK = 16
"""Block width of the two-level prefix sums of the tables."""

_LARGEST_UNIFORM = 1.0 - 2.0**-23
"""The largest value ``jax.random.uniform`` returns for float32."""


@functools.lru_cache(maxsize=8)
def _stirling_errors(max_value: int) -> np.ndarray:
    """``log(k!) - [(k + 1/2) log k - k + log(2 pi) / 2]`` for ``k = 0..max_value`` (0 at 0).

    Computed in float64; the values are small (at most 0.082), so float32 keeps them to
    about 1e-8.
    """
    k = np.arange(max_value + 1, dtype=np.float64)
    log_factorials = np.array([math.lgamma(i + 1.0) for i in range(max_value + 1)])
    with np.errstate(divide="ignore", invalid="ignore"):
        stirling = (k + 0.5) * np.log(k) - k + 0.5 * math.log(2.0 * math.pi)
    return np.where(k > 0, log_factorials - stirling, 0.0)


@functools.lru_cache(maxsize=8)
def _poisson_log_constants(max_count: int) -> np.ndarray:
    """``-stirling_error(k) - log(2 pi k) / 2`` for ``k = 0..max_count`` (0 at 0), float32."""
    k = np.arange(max_count + 1, dtype=np.float64)
    with np.errstate(divide="ignore"):
        value = -_stirling_errors(max_count) - 0.5 * np.log(2.0 * math.pi * k)
    return np.where(k > 0, value, 0.0).astype(np.float32)


@functools.lru_cache(maxsize=8)
def _binomial_log_constants(max_trials: int) -> np.ndarray:
    """``e(n) - e(k) - e(n - k) + log(n / (2 pi k (n - k))) / 2`` for ``0 < k < n``, else 0.

    ``e`` is the Stirling error; float32 of shape ``(max_trials + 1, max_trials + 1)``.
    """
    errors = _stirling_errors(max_trials)
    n = np.arange(max_trials + 1)[:, None]
    k = np.arange(max_trials + 1)[None, :]
    inside = (k > 0) & (k < n)
    rest = np.where(inside, n - k, 1)
    value = (
        errors[n]
        - errors[k]
        - errors[np.where(inside, n - k, 0)]
        + 0.5 * np.log(np.maximum(n, 1) / (2.0 * math.pi * np.maximum(k, 1) * rest))
    )
    return np.where(inside, value, 0.0).astype(np.float32)


def deviance(k: Array, mean: Array) -> Array:
    """``k log(k / mean) + mean - k >= 0`` (float32), accurate also when ``k`` is near ``mean``.

    The term of the saddle-point form of Poisson and binomial probabilities (C. Loader, "Fast
    and accurate computation of binomial probabilities", 2000):
    ``log Poisson(k; mean) = -deviance - stirling_error(k) - log(2 pi k) / 2``. With
    ``v = (k - mean) / (k + mean)``, ``|v| < 0.1`` uses the series
    ``(k - mean) v + 2 k (v^3/3 + v^5/5 + v^7/7 + v^9/9)``, which has no cancellation.
    ``k = 0`` gives ``mean``; ``mean = 0 < k`` gives ``inf``.
    """
    difference = k - mean
    v = difference / jnp.maximum(k + mean, 1e-30)
    v2 = v * v
    series = difference * v + 2.0 * k * v * v2 * (
        1.0 / 3.0 + v2 * (1.0 / 5.0 + v2 * (1.0 / 7.0 + v2 / 9.0))
    )
    safe_k = jnp.where(k > 0, k, 1.0)
    with_log = jnp.where(k > 0, safe_k * jnp.log(safe_k / mean), 0.0) + mean - k
    return jnp.where(jnp.abs(v) < 0.1, series, with_log)


def _prefix_sum_rows(values: Array) -> Array:
    """Cumulative sum along axis 1 of a ``(rows, width)`` float32 array.

    Two levels of small matrix products with triangular matrices of ones (inside blocks of
    ``_CUMSUM_BLOCK`` columns, then across blocks): a few times faster on a CPU than
    ``jnp.cumsum`` for the ``(N + 1)^2`` table, and the same sums up to float32 rounding.
    """
    rows, width = values.shape
    block = _CUMSUM_BLOCK
    num_blocks = -(-width // block)
    padded = jnp.pad(values, ((0, 0), (0, num_blocks * block - width)))
    blocks = padded.reshape(rows, num_blocks, block)
    within = jnp.einsum(
        "rbi,ij->rbj",
        blocks,
        jnp.asarray(np.triu(np.ones((block, block), np.float32))),
        precision=jax.lax.Precision.HIGHEST,
    )
    before_block = jnp.einsum(  # sums of the earlier blocks (strictly upper triangle)
        "rb,bc->rc",
        within[:, :, -1],
        jnp.asarray(np.triu(np.ones((num_blocks, num_blocks), np.float32), k=1)),
        precision=jax.lax.Precision.HIGHEST,
    )
    return (within + before_block[:, :, None]).reshape(rows, -1)[:, :width]


def binomial_cdf_table(r: Array, max_trials: int) -> Array:
    """``F[n, k] = P(Binomial(n, r) <= k)``, shape ``(max_trials + 1, max_trials + 1)``, float32.

    The pmf in saddle-point form, ``exp(c[n, k] - D(k, n r) - D(n - k, n (1 - r)))`` for
    ``0 < k < n`` (``D`` = :func:`deviance`, ``c`` a float64-computed constant), ``(1 - r)^n``
    at ``k = 0`` and ``r^n`` at ``k = n``, summed along ``k``; no exponent is a difference of
    large numbers, so the table is accurate to a few float32 roundings (``r = 0`` and
    ``r = 1`` exact). Entries with ``k >= n`` are set to 2 (above any uniform draw) so that the
    search always stops at ``n`` at the latest, whatever the rounding of the cumulative sum.
    """
    r = jnp.asarray(r, jnp.float32)
    n = jnp.arange(max_trials + 1, dtype=jnp.float32)[:, None]
    k = jnp.arange(max_trials + 1, dtype=jnp.float32)[None, :]
    inside = (k > 0) & (k < n)
    log_pmf = jnp.where(
        inside,
        _binomial_log_constants(max_trials) - deviance(k, n * r) - deviance(n - k, n * (1 - r)),
        jnp.where(k == 0, n * jnp.log1p(-r), n * jnp.log(r)),
    )
    pmf = jnp.where(k <= n, jnp.exp(jnp.where(n == 0, 0.0, log_pmf)), 0.0)
    return jnp.where(k >= n, 2.0, _prefix_sum_rows(pmf))


def _table_search(
    table: Array,
    rows: Array,
    high: Array,
    go_right: Callable[[Array], Array],
    max_high: int,
) -> Array:
    """``min(high, smallest k where go_right(table[rows, k]) is false)``, elementwise.

    ``go_right`` must be true up to some column and false after it along every row, and
    ``high <= max_high`` (static). A binary search on all entries at once. On a CPU it runs in
    a ``lax.while_loop`` that ends when every range has shrunk to one value
    (``ceil(log2(max(high) + 1))`` gathers, few when the bound is small); on other backends,
    where each loop iteration costs a round trip to the host, the ``ceil(log2(max_high + 1))``
    halvings are unrolled. Both give the same result.
    """
    flat = table.reshape(-1)
    row_start = rows * table.shape[1]

    def unresolved(bounds: tuple[Array, Array]) -> Array:
        low, high = bounds
        return jnp.any(low < high)

    def halve(bounds: tuple[Array, Array]) -> tuple[Array, Array]:
        low, high = bounds
        middle = (low + high) // 2
        right = go_right(flat[row_start + middle]) & (low < high)
        return jnp.where(right, middle + 1, low), jnp.where(right, high, middle)

    bounds = (jnp.zeros_like(high), high)
    if _search_in_while_loop():
        return jax.lax.while_loop(unresolved, halve, bounds)[0]
    for _ in range(math.ceil(math.log2(max_high + 1))):
        bounds = halve(bounds)
    return bounds[0]


def _search_in_while_loop() -> bool:
    """Whether table searches stop early in a ``lax.while_loop`` (CPU) or are unrolled."""
    return jax.default_backend() == "cpu"


def binomial_by_inversion(key: Array, trials: Array, r: Array, max_trials: int) -> Array:
    """Draw ``Binomial(trials, r)`` for integer ``trials`` in ``0..max_trials``, one scalar ``r``.

    Args:
      key: PRNG key.
      trials: whole numbers in ``0..max_trials`` (any shape, int or float dtype).
      r: scalar success probability in ``[0, 1]``.
      max_trials: static bound on ``trials`` (the table's size).

    Returns:
      int32 draws with the shape of ``trials``.

    Above ``TABLE_MAX_COUNT`` no table is built: the draws come from :func:`binomial` (also
    exact, at a cost that does not grow with ``max_trials``).
    """
    if max_trials > TABLE_MAX_COUNT:
        return binomial(key, trials, r)
    table = binomial_cdf_table(r, max_trials)
    n = jnp.asarray(trials).astype(jnp.int32)
    u = jax.random.uniform(key, n.shape, jnp.float32)
    # No draw exceeds the first k with F[n_max, k] > the largest uniform (F falls with n).
    row_of_largest = table[jnp.max(n, initial=0)]
    bound = jnp.sum(row_of_largest <= _LARGEST_UNIFORM).astype(jnp.int32)
    return _table_search(table, n, jnp.minimum(n, bound), lambda cdf: cdf <= u, max_trials)


def fine_uniform(key: Array, shape: tuple[int, ...]) -> Array:
    """Uniform float32 draws in ``[0, 1)`` made from all 32 random bits, shape ``shape``.

    ``bits * 2^-32`` rounded to float32 (and kept below 1): near 0 the resolution is
    ``2^-32``, so ``P(w < x)`` is within float32 rounding of ``x`` even for tiny ``x``
    (``jax.random.uniform`` has a fixed resolution of ``2^-23``).
    """
    bits = jax.random.bits(key, shape, jnp.uint32)
    return jnp.minimum(bits.astype(jnp.float32) * 2.0**-32, 1.0 - 2.0**-24)


def _zero_unless_positive(rate: Array) -> Array:
    """``rate`` as float32 with negative and NaN entries replaced by 0."""
    rate = jnp.asarray(rate, jnp.float32)
    return jnp.where(rate > 0.0, rate, 0.0)


def capped_poisson_from_uniform(w: Array, rate: Array, cap: Array) -> Array:
    """``min(X, cap)`` with ``X = min{k : w >= P(Poisson(rate) > k)}``: the exact tail inverse.

    With ``w ~ U[0, 1)`` the result is a draw of ``min(Poisson(rate), cap)``. Deterministic in
    its arguments (the random part is ``w``); see the module docstring for the recurrences.

    Args:
      w: uniforms in ``[0, 1)``, float32, any shape.
      rate: Poisson rates, broadcastable to ``w``; negative and NaN rates count as 0. Meant for
        ``0 <= rate <= MAX_FALLBACK_RATE``: the loop takes about ``rate + 6 sqrt(rate)``
        iterations at most, and far larger rates underflow ``exp(-rate)`` in float32.
      cap: whole numbers ``>= 0``, broadcastable to ``w``.

    Returns:
      int32 array of ``w``'s shape with entries in ``0..cap``.
    """
    w = jnp.asarray(w, jnp.float32)
    rate = jnp.broadcast_to(_zero_unless_positive(rate), w.shape)
    cap = jnp.broadcast_to(jnp.asarray(cap).astype(jnp.int32), w.shape)
    return _invert_tail(w, jnp.exp(-rate), -jnp.expm1(-rate), lambda k: rate, cap)


def _invert_tail(
    w: Array,
    first_pmf: Array,
    at_least_one: Array,
    ratio_numerator: Callable[[Array], Array],
    cap: Array,
) -> Array:
    """``min(X, cap)``, ``X = min{k : w >= P(X > k)}``, for a pmf with ``p_k / p_{k-1} = g(k) / k``.

    ``first_pmf = p_0``, ``at_least_one = P(X >= 1)`` (given accurately, not as ``1 - p_0``),
    ``g = ratio_numerator`` (float32 ``k`` to the numerator, decreasing ``g(k) / k``). The
    tail ``P(X > k) = P(X >= 1) - G_k`` with ``G_k = p_1 + ... + p_k``; a draw ends when
    ``w >= P(X > k)``, at the cap, or once past the mode the geometric bound
    ``P(X > k) <= p_k rho / (1 - rho)`` (``rho = g(k + 1) / (k + 1)``) is below
    ``_TAIL_TOLERANCE``. All entries advance together in one ``lax.while_loop``; int32.
    """

    def resolved(k: Array, pmf: Array, below: Array) -> Array:
        next_k = k.astype(jnp.float32) + 1.0
        numerator = ratio_numerator(next_k)
        tail_is_negligible = (next_k > numerator) & (
            pmf * numerator <= (next_k - numerator) * _TAIL_TOLERANCE
        )
        return (w + below >= at_least_one) | (k >= cap) | tail_is_negligible

    def keep_going(carry: tuple[Array, Array, Array, Array]) -> Array:
        return jnp.any(carry[3])

    def advance(carry: tuple[Array, Array, Array, Array]) -> tuple[Array, Array, Array, Array]:
        k, pmf, below, active = carry
        next_k = k + 1
        next_pmf = pmf * ratio_numerator(next_k.astype(jnp.float32)) / next_k.astype(jnp.float32)
        next_below = below + next_pmf
        k = jnp.where(active, next_k, k)
        pmf = jnp.where(active, next_pmf, pmf)
        below = jnp.where(active, next_below, below)
        return k, pmf, below, active & ~resolved(k, pmf, below)

    # The first _UNROLLED_TERMS values of k, where most draws end when rates are small, as
    # straight-line code that XLA fuses into one pass (each loop iteration is a pass over the
    # arrays); the same recurrences, so the same draws. Unresolved entries go on in the loop.
    pmf = first_pmf
    below = jnp.zeros(w.shape, jnp.float32)
    active = ~resolved(jnp.int32(0), pmf, below)
    k = jnp.zeros(w.shape, jnp.int32)
    for next_k in range(1, _UNROLLED_TERMS + 1):
        k = k + active.astype(jnp.int32)
        pmf = pmf * ratio_numerator(jnp.float32(next_k)) / jnp.float32(next_k)
        below = below + pmf
        active = active & ~resolved(jnp.int32(next_k), pmf, below)
    return jax.lax.while_loop(keep_going, advance, (k, pmf, below, active))[0]


def capped_poisson(
    key: Array, rate: Array, cap: Array, *, fallback_rate: float = DEFAULT_FALLBACK_RATE
) -> Array:
    """Draw ``min(Poisson(rate), cap)`` elementwise, exactly, int32.

    Rates up to ``fallback_rate`` go through :func:`capped_poisson_from_uniform` with
    :func:`fine_uniform` draws; larger rates (computed only when some rate exceeds
    ``fallback_rate``) through PTRS (:func:`_poisson_by_rejection`), then capped. Both are
    exact draws of the same law, at a cost that does not grow with the rates.

    Args:
      key: PRNG key (any implementation: threefry, rbg, ...).
      rate: float rates ``>= 0``, any shape; negative and NaN rates count as 0 (no draw
        above 0), so that a bad prediction cannot fill counts up to ``cap``.
      cap: whole numbers ``>= 0``, broadcastable to ``rate``.
      fallback_rate: a Python float in ``[REJECTION_MIN_MEAN, MAX_FALLBACK_RATE]``.

    Returns:
      int32 draws with the shape of ``rate``, entries in ``0..cap``.

    Raises:
      ValueError: ``fallback_rate`` outside ``[REJECTION_MIN_MEAN, MAX_FALLBACK_RATE]``.
    """
    if not REJECTION_MIN_MEAN <= float(fallback_rate) <= MAX_FALLBACK_RATE:
        raise ValueError(
            f"fallback_rate must be in [{REJECTION_MIN_MEAN}, {MAX_FALLBACK_RATE}], "
            f"got {float(fallback_rate)}"
        )
    rate = _zero_unless_positive(rate)
    cap = jnp.broadcast_to(jnp.asarray(cap).astype(jnp.int32), rate.shape)
    uniform_key, rejection_key = jax.random.split(key)
    large = rate > fallback_rate
    small_draws = capped_poisson_from_uniform(
        fine_uniform(uniform_key, rate.shape), jnp.where(large, 0.0, rate), cap
    )
    large_draws = _zeros_unless(
        jnp.any(large),
        lambda: _poisson_by_rejection(rejection_key, jnp.where(large, rate, fallback_rate)),
        rate.shape,
    )
    return jnp.where(large, jnp.minimum(large_draws.astype(jnp.int32), cap), small_draws)


def _suffix_sum_rows(values: Array) -> Array:
    """``out[:, k] = sum_{j > k} values[:, j]`` (0 in the last column), float32.

    Summed from the small end, so small tails keep their relative accuracy (no ``1 - F``).
    """
    inclusive = _prefix_sum_rows(values[:, ::-1])[:, ::-1]
    return jnp.pad(inclusive[:, 1:], ((0, 0), (0, 1)))


def poisson_tail_table(r: Array, max_count: int) -> Array:
    """``S[m, k] = P(Poisson(m r) > k)`` for ``m, k = 0..max_count``, float32, last column -1.

    The pmf in saddle-point form, ``exp(c[k] - D(k, m r))`` (``D`` = :func:`deviance`, ``c`` a
    float64-computed constant; ``exp(-m r)`` at ``k = 0``), summed above ``k`` inside the table,
    plus ``P(Poisson(m r) > N)``: ``1 - sum of the row`` when that is above 1e-3, else
    ``gammainc(N + 1, m r)`` (accurate for small values). The last column is set to -1 (below
    any uniform) so that a search stops at ``N`` at the latest.
    """
    r = jnp.asarray(r, jnp.float32)
    rate = jnp.arange(max_count + 1, dtype=jnp.float32)[:, None] * r
    k = jnp.arange(max_count + 1, dtype=jnp.float32)[None, :]
    log_pmf = jnp.where(k == 0, -rate, _poisson_log_constants(max_count) - deviance(k, rate))
    pmf = jnp.exp(log_pmf)
    inside = _suffix_sum_rows(pmf)
    outside_by_sum = 1.0 - (inside[:, :1] + pmf[:, :1])
    outside = jnp.where(
        outside_by_sum > 1e-3,
        outside_by_sum,
        jax.scipy.special.gammainc(jnp.float32(max_count + 1), rate),
    )
    return jnp.where(k >= max_count, -1.0, inside + outside)


def capped_poisson_scaled(
    key: Array,
    scale: Array,
    r: Array,
    cap: Array,
    max_count: int,
    *,
    direct_rate: float = DEFAULT_DIRECT_RATE,
    fallback_rate: float = DEFAULT_FALLBACK_RATE,
) -> Array:
    """Draw ``min(Poisson(scale * r), cap)`` elementwise, exactly, for one scalar ``r``, int32.

    When every rate ``scale * r`` is at most ``direct_rate`` (most steps of a long grid), this
    is :func:`capped_poisson` on the rates: its loop then ends after a few iterations.
    Otherwise ``scale = m + f`` with ``m = min(floor(scale), N)`` and the draw is ``A + B``
    with ``A ~ Poisson(m r)`` from the tail table :func:`poisson_tail_table` (a bounded binary
    search with a :func:`fine_uniform` draw) and ``B ~ Poisson(f r)`` from
    :func:`capped_poisson`, both capped, so ``min(A + B, cap)`` has the law of
    ``min(Poisson(scale r), cap)``; the cost of that path hardly depends on the rates. Both
    paths are exact; the choice is made on the device, step by step. For a static
    ``max_count`` above ``TABLE_MAX_COUNT`` no table is built and every call takes the direct
    path, whose cost does not grow with ``max_count`` or the rates.

    Args:
      key: PRNG key.
      scale: float scale factors ``>= 0`` (for tau-leaping the predictions ``yhat``), any shape;
        negative and NaN entries count as 0.
      r: scalar rate factor ``>= 0`` (for tau-leaping the bridge probability of the step).
      cap: whole numbers in ``0..max_count``, broadcastable to ``scale``.
      max_count: static ``N``, the table's size.
      direct_rate: largest rate for which the table is skipped (a Python float ``>= 0``).
      fallback_rate: passed to :func:`capped_poisson` (matters on the table path only when
        ``scale > N + 1``).

    Returns:
      int32 draws with the shape of ``scale``, entries in ``0..cap``.

    Raises:
      ValueError: ``direct_rate < 0`` or a bad ``fallback_rate``.
    """
    if not float(direct_rate) >= 0.0:
        raise ValueError(f"direct_rate must be >= 0, got {direct_rate}")
    scale = _zero_unless_positive(scale)
    cap = jnp.broadcast_to(jnp.asarray(cap).astype(jnp.int32), scale.shape)
    r = jnp.maximum(jnp.asarray(r, jnp.float32), 0.0)

    if max_count > TABLE_MAX_COUNT:
        return capped_poisson(key, scale * r, cap, fallback_rate=fallback_rate)

    def direct() -> tuple[Array, Array, Array, Array]:
        return key, jnp.zeros(scale.shape, jnp.int32), scale * r, cap

    def by_table() -> tuple[Array, Array, Array, Array]:
        table_key, rest_key = jax.random.split(key)
        whole = jnp.minimum(jnp.floor(scale), float(max_count))
        rows = whole.astype(jnp.int32)
        table = poisson_tail_table(r, max_count)
        w = fine_uniform(table_key, scale.shape)
        # Tails grow with m: no draw passes the first k with S[m_max, k] <= the tolerance.
        row_of_largest = table[jnp.max(rows, initial=0)]
        bound = jnp.sum(row_of_largest > _TAIL_TOLERANCE).astype(jnp.int32)
        from_table = _table_search(
            table, rows, jnp.minimum(cap, bound), lambda tail: tail > w, max_count
        )
        return rest_key, from_table, (scale - whole) * r, cap - from_table

    # Both paths end in one draw of capped_poisson, on the rates the chosen path leaves.
    largest_rate = jnp.max(scale, initial=0.0) * r
    rest_key, from_table, rest_rate, rest_cap = jax.lax.cond(
        largest_rate <= direct_rate, direct, by_table
    )
    return from_table + capped_poisson(rest_key, rest_rate, rest_cap, fallback_rate=fallback_rate)


# ---------------------------------------------------------------------------------------------
# Draws whose cost does not grow with the counts (the samplers' path above TABLE_MAX_COUNT).

TABLE_MAX_COUNT = 511
"""Largest static max count for which the samplers build per-step tables (above: flat draws)."""

REJECTION_MIN_MEAN = 10.0
"""Means from which binomial and Poisson draws use transformed rejection (BTRS, PTRS)."""

_SMALL_STIRLING = 16
"""Stirling errors of ``k < _SMALL_STIRLING`` come from a float64-computed table."""


def stirling_error(k: Array) -> Array:
    """``e(k) = log(k!) - [(k + 1/2) log k - k + log(2 pi) / 2]`` for whole ``k >= 0``, float32.

    A float64-computed table below ``_SMALL_STIRLING``, the series
    ``1/(12k) - 1/(360k^3) + 1/(1260k^5)`` above (error below ``1/(1680 k^7) < 3e-12``).
    """
    k = jnp.asarray(k, jnp.float32)
    table = jnp.asarray(_stirling_errors(_SMALL_STIRLING - 1).astype(np.float32))
    small = table[jnp.clip(k, 0, _SMALL_STIRLING - 1).astype(jnp.int32)]
    inverse = 1.0 / jnp.maximum(k, 1.0)
    inverse2 = inverse * inverse
    series = inverse * (1.0 / 12.0 - inverse2 * (1.0 / 360.0 - inverse2 / 1260.0))
    return jnp.where(k < _SMALL_STIRLING, small, series)


def binomial_log_pmf(k: Array, n: Array, q: Array) -> Array:
    """``log Binomial(k; n, q)`` for whole ``0 <= k <= n``, float32, in saddle-point form.

    ``e(n) - e(k) - e(n - k) + log(n / (2 pi k (n - k))) / 2 - D(k, n q) - D(n - k, n (1 - q))``
    for ``0 < k < n`` (``e`` = Stirling error, ``D`` = :func:`deviance`); ``n log(1 - q)`` at
    ``k = 0`` and ``n log q`` at ``k = n``. No term is a difference of large numbers, so the
    error stays at a few float32 roundings of the deviances, also for ``n`` in the millions
    (``lgamma`` differences lose ``~ n log n * 6e-8``).
    """
    k, n, q = (jnp.asarray(x, jnp.float32) for x in (k, n, q))
    inside = (k > 0) & (k < n)
    k_in = jnp.where(inside, k, 1.0)
    rest = jnp.where(inside, n - k, 1.0)
    n_in = jnp.where(inside, n, 2.0)
    log_constant = (
        stirling_error(n_in)
        - stirling_error(k_in)
        - stirling_error(rest)
        + 0.5 * (jnp.log(n_in) - math.log(2.0 * math.pi) - jnp.log(k_in) - jnp.log(rest))
    )
    body = log_constant - deviance(k_in, n_in * q) - deviance(rest, n_in * (1.0 - q))
    edge = jnp.where(k == 0, n * jnp.log1p(-q), n * jnp.log(q))
    return jnp.where(inside, body, jnp.where((k == 0) & (n == 0), 0.0, edge))


def poisson_log_pmf(k: Array, rate: Array) -> Array:
    """``log Poisson(k; rate)`` for whole ``k >= 0`` and ``rate > 0``, float32, saddle-point form.

    ``-D(k, rate) - e(k) - log(2 pi k) / 2`` (``D`` = :func:`deviance`, ``e`` = Stirling error),
    ``-rate`` at ``k = 0``; no ``k log(rate) - lgamma(k + 1)`` cancellation.
    """
    k, rate = jnp.asarray(k, jnp.float32), jnp.asarray(rate, jnp.float32)
    safe_k = jnp.maximum(k, 1.0)
    body = (
        -deviance(safe_k, rate)
        - stirling_error(safe_k)
        - 0.5 * (math.log(2.0 * math.pi) + jnp.log(safe_k))
    )
    return jnp.where(k > 0, body, -rate)


Proposal = Callable[[tuple[Array, ...], Array, Array], tuple[Array, Array]]
"""``propose(parameters, u, v) -> (k, accepted)``, elementwise, with uniforms ``u, v``."""


def _rejection_loop(key: Array, parameters: tuple[Array, ...], propose: Proposal) -> Array:
    """Rejection sampling: ``propose`` with fresh uniforms until every entry has accepted a
    ``k``; float32 of the parameters' shape.

    Round ``i`` draws its uniforms from ``fold_in(key, i)`` for every entry, and each entry
    keeps its first accepted proposal, which has the target law. With acceptance rates of
    0.75 to 0.9 per proposal the loop takes about ``log(size) / log(1 / (1 - rate))`` rounds.
    """
    shape = parameters[0].shape

    def pending(carry: tuple[Array, Array, Array]) -> Array:
        return jnp.any(~carry[2])

    def one_round(carry: tuple[Array, Array, Array]) -> tuple[Array, Array, Array]:
        round_index, values, done = carry
        u, v = _two_uniforms(jax.random.fold_in(key, round_index), shape)
        k, accept = propose(parameters, u, v)
        return round_index + 1, jnp.where(done, values, k), done | accept

    start = (jnp.int32(0), jnp.zeros(shape, jnp.float32), jnp.zeros(shape, bool))
    return jax.lax.while_loop(pending, one_round, start)[1]


def _two_uniforms(key: Array, shape: tuple[int, ...]) -> tuple[Array, Array]:
    """Two independent float32 ``U[0, 1)`` arrays of ``shape``.

    Drawn with two keys rather than as one ``(2, ...)`` array, which XLA on a CPU was
    measured to fuse into the consumers several times over (a few times slower).
    """
    u_key, v_key = jax.random.split(key)
    return jax.random.uniform(u_key, shape), jax.random.uniform(v_key, shape)


def _binomial_by_rejection(key: Array, n: Array, q: Array) -> Array:
    """``Binomial(n, q)`` by BTRS, for ``q <= 1/2`` and ``n q >= REJECTION_MIN_MEAN``, float32.

    W. Hormann, "The generation of binomial random variates", J. Statist. Comput. Simul. 46
    (1993), algorithm BTRS: with ``s = sqrt(n q (1 - q))``, ``b = 1.15 + 2.53 s``,
    ``a = -0.0873 + 0.0248 b + 0.01 q``, ``c = n q + 1/2``, ``v_r = 0.92 - 4.2 / b``,
    ``alpha = (2.83 + 5.1 / b) s`` and the mode ``m = floor((n + 1) q)``: propose
    ``k = floor((2a / u_s + b) u + c)`` from ``u ~ U(-1/2, 1/2)``, ``u_s = 1/2 - |u|``; accept at
    once when ``u_s >= 0.07`` and ``v <= v_r``, otherwise when ``0 <= k <= n`` and
    ``log(v alpha / (a / u_s^2 + b)) <= log f(k) - log f(m)``. The log-pmf ratio comes from
    :func:`binomial_log_pmf`, accurate in float32 (acceptance about 0.9 per proposal).
    """
    log_pmf_at_mode = binomial_log_pmf(jnp.floor((n + 1.0) * q), n, q)

    def propose(parameters: tuple[Array, ...], u: Array, v: Array) -> tuple[Array, Array]:
        n, q, log_pmf_at_mode = parameters
        spread = jnp.sqrt(n * q * (1.0 - q))
        b = 1.15 + 2.53 * spread
        a = -0.0873 + 0.0248 * b + 0.01 * q
        v_r = 0.92 - 4.2 / b
        alpha = (2.83 + 5.1 / b) * spread
        u = u - 0.5
        u_s = 0.5 - jnp.abs(u)
        k = jnp.floor((2.0 * a / u_s + b) * u + n * q + 0.5)
        quick = (u_s >= 0.07) & (v <= v_r)
        inside = (k >= 0.0) & (k <= n)
        k_in = jnp.clip(k, 0.0, n)
        hat = jnp.log(v * alpha / (a / (u_s * u_s) + b))
        return k_in, quick | (inside & (hat <= binomial_log_pmf(k_in, n, q) - log_pmf_at_mode))

    return _rejection_loop(key, (n, q, log_pmf_at_mode), propose)


def _poisson_by_rejection(key: Array, rate: Array) -> Array:
    """``Poisson(rate)`` by PTRS, for ``rate >= REJECTION_MIN_MEAN``, float32.

    W. Hormann, "The transformed rejection method for generating Poisson random variables",
    Insurance: Mathematics and Economics 12 (1993), algorithm PTRS: with
    ``b = 0.931 + 2.53 sqrt(rate)``, ``a = -0.059 + 0.02483 b``,
    ``1/alpha = 1.1239 + 1.1328 / (b - 3.4)``, ``v_r = 0.9277 - 3.6224 / (b - 2)``: propose
    ``k = floor((2a / u_s + b) u + rate + 0.43)``; accept at once when ``u_s >= 0.07`` and
    ``v <= v_r``; reject when ``k < 0`` or (``u_s < 0.013`` and ``v > u_s``); otherwise accept
    when ``log(v / alpha / (a / u_s^2 + b)) <= log f(k)``, with ``log f`` from
    :func:`poisson_log_pmf` (accurate in float32, unlike ``k log(rate) - lgamma(k + 1)``).
    """

    def propose(parameters: tuple[Array, ...], u: Array, v: Array) -> tuple[Array, Array]:
        (rate,) = parameters
        b = 0.931 + 2.53 * jnp.sqrt(rate)
        a = -0.059 + 0.02483 * b
        inverse_alpha = 1.1239 + 1.1328 / (b - 3.4)
        v_r = 0.9277 - 3.6224 / (b - 2.0)
        u = u - 0.5
        u_s = 0.5 - jnp.abs(u)
        k = jnp.floor((2.0 * a / u_s + b) * u + rate + 0.43)
        quick = (u_s >= 0.07) & (v <= v_r)
        allowed = (k >= 0.0) & ~((u_s < 0.013) & (v > u_s))
        k_in = jnp.maximum(k, 0.0)
        hat = jnp.log(v * inverse_alpha / (a / (u_s * u_s) + b))
        return k_in, quick | (allowed & (hat <= poisson_log_pmf(k_in, rate)))

    return _rejection_loop(key, (rate,), propose)


def _zeros_unless(condition: Array, draw: Callable[[], Array], shape: tuple[int, ...]) -> Array:
    """``draw()`` when ``condition`` (a scalar) holds, else float32 zeros of ``shape``."""
    return jax.lax.cond(condition, draw, lambda: jnp.zeros(shape, jnp.float32))


def binomial_from_uniform(w: Array, trials: Array, q: Array) -> Array:
    """``X = min{k : w >= P(Binomial(trials, q) > k)}``: the exact tail inverse, int32.

    The sequential inversion of :func:`capped_poisson_from_uniform` with the binomial
    recurrence ``p_k = p_{k-1} (n - k + 1) q / (k (1 - q))``, ``p_0 = (1 - q)^n``,
    ``P(X >= 1) = -expm1(n log1p(-q))``; a draw ends at ``n`` at the latest, or past the mode
    once ``P(X > k) <= p_k rho / (1 - rho) <= 2^-32`` (``rho = p_{k+1} / p_k``, which falls with
    ``k``). The loop takes about ``n q + 6 sqrt(n q)`` iterations at most: meant for
    ``n q <= REJECTION_MIN_MEAN``.

    Args:
      w: uniforms in ``[0, 1)`` (:func:`fine_uniform` for accuracy at tiny ``q``), any shape.
      trials: whole numbers ``>= 0``, broadcastable to ``w``.
      q: success probabilities in ``[0, 1)``, broadcastable to ``w``.
    """
    w = jnp.asarray(w, jnp.float32)
    n = jnp.broadcast_to(jnp.asarray(trials, jnp.float32), w.shape)
    q = jnp.broadcast_to(jnp.asarray(q, jnp.float32), w.shape)
    log_none = n * jnp.log1p(-q)
    odds = q / (1.0 - q)
    return _invert_tail(
        w,
        jnp.exp(log_none),
        -jnp.expm1(log_none),
        lambda k: (n - k + 1.0) * odds,
        n.astype(jnp.int32),
    )


def binomial(key: Array, trials: Array, p: Array) -> Array:
    """Draw ``Binomial(trials, p)`` elementwise, exactly, at a cost that does not grow with
    ``trials``; int32.

    With ``q = min(p, 1 - p)`` (a draw for ``p > 1/2`` is ``trials - Binomial(trials, 1 - p)``):
    means ``trials q < REJECTION_MIN_MEAN`` by :func:`binomial_from_uniform` with
    :func:`fine_uniform` draws (so ``P(X > 0)`` is right even far below ``2^-23``), larger ones
    by BTRS (:func:`_binomial_by_rejection`, computed only when some entry needs it).

    Args:
      key: PRNG key.
      trials: whole numbers in ``0..2^24`` (float32-exact), any shape.
      p: probabilities in ``[0, 1]``, broadcastable to ``trials``.

    Returns:
      int32 draws with the broadcast shape, entries in ``0..trials``.
    """
    n = jnp.asarray(trials, jnp.float32)
    p = jnp.clip(jnp.asarray(p, jnp.float32), 0.0, 1.0)
    shape = jnp.broadcast_shapes(n.shape, p.shape)
    n, p = jnp.broadcast_to(n, shape), jnp.broadcast_to(p, shape)
    flip = p > 0.5
    q = jnp.where(flip, 1.0 - p, p)
    large = n * q >= REJECTION_MIN_MEAN
    inversion_key, rejection_key = jax.random.split(key)
    small_draws = binomial_from_uniform(
        fine_uniform(inversion_key, shape), jnp.where(large, 0.0, n), q
    ).astype(jnp.float32)

    def draw_large() -> Array:
        return _binomial_by_rejection(
            rejection_key, jnp.where(large, n, 2.0 * REJECTION_MIN_MEAN), jnp.where(large, q, 0.5)
        )

    large_draws = _zeros_unless(jnp.any(large), draw_large, shape)
    draws = jnp.where(large, large_draws, small_draws)
    return jnp.where(flip, n - draws, draws).astype(jnp.int32)
