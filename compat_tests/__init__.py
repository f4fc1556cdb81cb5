"""compat_tests: run CPython's own test modules plainly and under ``python -m demishim``
and compare run/pass/skip/fail counts (``python -m compat_tests --help``)."""
from .runner import (Counts, ShimStats, TIERS, main, parse_counts, parse_stats)  # noqa: F401
