"""demishim: run an unmodified Python program over a queue library OS.

    python -m demishim [--libos NAME] [--strict] [--stats] script.py [args...]
    python -m demishim [options] -m module [args...]
    python -m demishim [options] -c code [args...]
    demishim ...                      (the console script: the same)

The launcher (``demishim.__main__``) installs the patches of the ``shim`` package before the
program imports anything, then runs it as ``__main__`` as plain Python would.
"""
from __future__ import annotations

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """The launcher's entry point (imported lazily, so ``python -m demishim`` runs it once)."""
    from demishim.__main__ import main as _main
    return _main(argv)
