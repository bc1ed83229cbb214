"""How the benchmark writes numbers: times, ratios, percentages and ranges of ratios, for the report, its plot
and the command line's table (``layersens.bench`` exports them as ``format_seconds``, ``format_speedup``, ...)."""

from __future__ import annotations


def seconds(value: float | None) -> str:
    """``1.23 s``, ``45.6 ms``, ``789 µs``; ``—`` for no time."""
    if value is None:
        return "—"
    if value >= 1:
        return f"{value:.2f} s"
    if value >= 1e-3:
        return f"{value * 1e3:.1f} ms"
    return f"{value * 1e6:.0f} µs"


def ratio(value: float) -> str:
    """A ratio with as many digits as matter: 1,700, 35.2, 5.59, 0.0121."""
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def speedup(value: float | None) -> str:
    """A ratio as a factor, ``35.2×``; ``—`` for none."""
    return "—" if value is None else f"{ratio(value)}×"


def percent(fraction: float | None) -> str:
    """``12.3%``, or two significant digits below 0.1%: ``0.042%``; ``—`` for none."""
    if fraction is None:
        return "—"
    return f"{fraction:.1%}" if fraction >= 0.001 else f"{fraction * 100:.2g}%"


def span(values) -> str:
    """The range of some factors, ``2.1× to 35.2×``, or one factor where they print alike."""
    lo, hi = min(values), max(values)
    return speedup(lo) if ratio(lo) == ratio(hi) else f"{speedup(lo)} to {speedup(hi)}"
