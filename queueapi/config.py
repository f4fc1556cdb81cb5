"""Library OS names, Demikernel aliases, and the TOML configuration named by ``DEMI_CONFIG``."""
from __future__ import annotations

import errno
import importlib
import os
import tomllib
from typing import Any

__all__ = ["LIBOS_NAMES", "ALIASES", "resolve_name", "load_config", "load_backend_class"]

#: our library OSes, in the order the README presents them
LIBOS_NAMES = ("posix", "shm", "inet", "uring")

#: Demikernel's names for the same designs
ALIASES = {
    "catnap": "posix",
    "catmem": "shm",
    "catloop": "shm",
    "catpowder": "inet",
    "catnip": "inet",
    "catcollar": "uring",
}


def resolve_name(name: str | None) -> str:
    """The canonical libOS name for ``name``, ``$DEMI_LIBOS``, or ``posix``.

    Raises ``ValueError`` naming the valid choices for an unknown name.
    """
    if name is None:
        name = os.environ.get("DEMI_LIBOS") or "posix"
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in LIBOS_NAMES:
        choices = ", ".join(LIBOS_NAMES + tuple(ALIASES))
        raise ValueError(f"unknown library OS {name!r}; choose one of: {choices}")
    return key


def load_config(name: str, path: str | None = None) -> dict[str, Any]:
    """The ``[name]`` table of the TOML file at ``path`` or ``$DEMI_CONFIG`` (empty if none).

    A file that is named but missing or not valid TOML raises ``OSError``/``ValueError``
    naming the file, so a typo never silently runs with defaults.
    """
    path = path or os.environ.get("DEMI_CONFIG")
    if not path:
        return {}
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise OSError(errno.ENOENT, f"DEMI_CONFIG names {path!r}, which does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"DEMI_CONFIG file {path!r} is not valid TOML: {e}") from None
    table = data.get(name, {})
    if not isinstance(table, dict):
        raise ValueError(f"[{name}] in {path!r} must be a table")
    return table


def load_backend_class(name: str) -> type:
    """The ``Backend`` class of library OS ``name`` (``libos.<name>.backend.Backend``).

    A library OS that is not built yet raises ``OSError(ENOSYS)`` saying so.
    """
    try:
        mod = importlib.import_module(f"libos.{name}.backend")
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith(f"libos.{name}"):
            raise OSError(errno.ENOSYS,
                          f"the {name!r} library OS is not available in this version "
                          f"(see README.md, 'What works today')") from None
        raise
    return mod.Backend
