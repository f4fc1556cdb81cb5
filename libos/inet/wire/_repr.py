"""A dataclass __repr__ that shows payloads as lengths, not memoryview addresses."""

from __future__ import annotations

import dataclasses


def short_repr(self: object) -> str:
    """``Name(field=value, ..., payload=<N bytes>)`` for a dataclass instance."""
    parts = []
    for f in dataclasses.fields(self):  # type: ignore[arg-type]
        value = getattr(self, f.name)
        if f.name == "payload":
            parts.append(f"payload=<{len(value)} bytes>")
        else:
            parts.append(f"{f.name}={value!r}")
    return f"{type(self).__name__}({', '.join(parts)})"
