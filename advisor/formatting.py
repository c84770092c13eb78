"""Bytes, counts and bars as short text: the only place bytes become GiB strings."""

from __future__ import annotations

GiB = 1024**3
MiB = 1024**2


def fmt_bytes(n: int | float) -> str:
    """Bytes as a short human string (GiB above 1 GiB, else MiB)."""
    if abs(n) >= GiB:
        return f"{n / GiB:.2f} GiB"
    return f"{n / MiB:.0f} MiB"


def fmt_count(n: int) -> str:
    """A parameter count as 6.74B / 124M."""
    if n >= 1e9:
        return f"{n / 1e9:.2f}B"
    if n >= 1e6:
        return f"{n / 1e6:.1f}M"
    return f"{n:,}"


BAR_CHARS = "pgoatbx"
BAR_LEGEND = "p=parameters g=gradients o=optimizer a=activations t=temporaries b=buffers x=overhead"


def bar(parts: list[tuple[str, int]], capacity: int, width: int = 50) -> str:
    """A one-line stacked bar of ``parts`` against ``capacity`` (one letter per part, '.' = free)."""
    total = max(capacity, sum(v for _, v in parts), 1)
    out = ""
    for (_, value), char in zip(parts, BAR_CHARS):
        out += char * int(round(value / total * width))
    free = max(capacity - sum(v for _, v in parts), 0)
    out += "." * int(round(free / total * width))
    return f"[{out[:width]:<{width}}]"
