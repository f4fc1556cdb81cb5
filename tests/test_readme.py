"""The README's tour runs as written, and its first lines give the two commands."""
from __future__ import annotations

import pathlib
import re
import subprocess
import sys

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def test_readme_tour_runs(tmp_path):
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    script = tmp_path / "tour.py"
    script.write_text(code)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("tour ok")


def test_readme_opens_with_the_two_commands():
    head = README.read_text().splitlines()[:8]
    cmds = [line.split("#")[0].strip() for line in head if line.startswith("    ./scripts/")]
    assert cmds == ["./scripts/demo", "./scripts/test"]
    root = README.parent
    for c in cmds:
        assert (root / c).stat().st_mode & 0o111, f"{c} is not executable"
