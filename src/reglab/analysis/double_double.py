"""Double-double arithmetic on numpy arrays: a value is an unevaluated sum ``hi + lo`` of
two float64 arrays, carrying about 32 significant digits.

Why: the least-squares refinement (:mod:`reglab.analysis.least_squares`) needs residuals
and gradients more exact than float64 — and than x86's 80-bit ``longdouble``, whose 19
digits leave NIST's Wampler5 at 9 correct digits — and a polynomial's columns x², …, x¹⁰
exact rather than each rounded once (rounding them alone costs Filip half its digits).
Everything is built from error-free transformations (Knuth's two-sum, Dekker's split and
product), so it runs at numpy's speed on any platform.

Dekker's split overflows above ~1e300 and loses its low bits below ~1e-290; callers
scale by powers of two (exact) so that values are near 1 first.
"""

from __future__ import annotations

import numpy as np

_SPLIT = 134217729.0  # 2**27 + 1

DD = tuple[np.ndarray, np.ndarray]


def two_sum(a: np.ndarray, b: np.ndarray) -> DD:
    """s + e == a + b exactly, s the float64 sum."""
    s = a + b
    v = s - a
    return s, (a - (s - v)) + (b - v)


def _split(a: np.ndarray) -> DD:
    c = _SPLIT * a
    hi = c - (c - a)
    return hi, a - hi


def two_prod(a: np.ndarray, b: np.ndarray) -> DD:
    """p + e == a · b exactly, p the float64 product."""
    p = a * b
    ah, al = _split(a)
    bh, bl = _split(b)
    return p, ((ah * bh - p) + ah * bl + al * bh) + al * bl


def add(a: DD, b: DD) -> DD:
    s, e = two_sum(a[0], b[0])
    return two_sum(s, e + (a[1] + b[1]))


def mul(a: DD, b: DD) -> DD:
    p, e = two_prod(a[0], b[0])
    return two_sum(p, e + (a[0] * b[1] + a[1] * b[0]))


def neg(a: DD) -> DD:
    return -a[0], -a[1]


def sum_rows(a: DD) -> DD:
    """The sum along axis 0, pairwise (log₂ n vector steps): every partial sum is a
    double-double, so the result is good to ~n·1e-32 of the magnitudes summed."""
    hi, lo = a
    while hi.shape[0] > 1:
        half = hi.shape[0] // 2
        top = (hi[half:2 * half], lo[half:2 * half])
        s = add((hi[:half], lo[:half]), top)
        if hi.shape[0] % 2:
            s = (np.concatenate([s[0], hi[-1:]]), np.concatenate([s[1], lo[-1:]]))
        hi, lo = s
    if hi.shape[0] == 0:
        return np.zeros(hi.shape[1:]), np.zeros(hi.shape[1:])
    return hi[0], lo[0]


def powers(x: np.ndarray, degree: int) -> DD:
    """Columns x¹ … x^degree of a float64 vector, each exact to ~1e-32 relative."""
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    zero = np.zeros_like(x)
    hi, lo = np.empty((x.shape[0], degree)), np.empty((x.shape[0], degree))
    p: DD = (x, zero)
    for k in range(degree):
        hi[:, k], lo[:, k] = p
        if k + 1 < degree:
            p = mul(p, (x, zero))
    return hi, lo


def div(a: DD, b: np.ndarray | float) -> DD:
    """a / b for a float64 divisor: the quotient, corrected by the exact remainder."""
    q1 = a[0] / b
    p, e = two_prod(q1, np.asarray(b, dtype=np.float64))
    r = ((a[0] - p) - e) + a[1]
    return two_sum(q1, r / b)


def exponent(v: np.ndarray | float) -> np.ndarray:
    """Exponents e with v·2^-e within [0.5, 1) in magnitude (0 for zeros and non-finite
    values): the power of two that brings a value near 1, exactly."""
    v = np.asarray(v, dtype=np.float64)
    return np.frexp(np.where(np.isfinite(v) & (v != 0), v, 1.0))[1]


def mul_scaled(a: DD, b: np.ndarray | float) -> DD:
    """a · b for any magnitudes (values near 1e±300 too): both brought near 1 by powers
    of two (exact) first, since Dekker's split overflows above ~1e300."""
    ea, eb = exponent(a[0]), exponent(b)
    p = mul((np.ldexp(a[0], -ea), np.ldexp(a[1], -ea)),
            (np.ldexp(np.asarray(b, dtype=np.float64), -eb), np.zeros(np.shape(b))))
    return np.ldexp(p[0], ea + eb), np.ldexp(p[1], ea + eb)


def div_scaled(a: DD, b: np.ndarray | float) -> DD:
    """a / b for any magnitudes, as :func:`mul_scaled`."""
    ea, eb = exponent(a[0]), exponent(b)
    q = div((np.ldexp(a[0], -ea), np.ldexp(a[1], -ea)), np.ldexp(np.asarray(b, float), -eb))
    return np.ldexp(q[0], ea - eb), np.ldexp(q[1], ea - eb)
