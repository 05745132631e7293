"""Parsing and printing byte sizes the way restic users write them (500M, 2G, 1.5T)."""

from __future__ import annotations

_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(text: str) -> int:
    s = text.strip().upper().removesuffix("IB").removesuffix("B") if text else ""
    unit = s[-1:] if s[-1:] in _UNITS else ""
    number = s[:-1] if unit else s
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"invalid size {text!r} (examples: 4096, 500K, 16M, 2G)") from None
    if value < 0:
        raise ValueError(f"invalid size {text!r}: negative")
    return int(value * _UNITS[unit])


def format_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3f} {unit}"
        n /= 1024
    return f"{n} B"
