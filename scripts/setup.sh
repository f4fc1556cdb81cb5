# Sourced by scripts/demo and scripts/test: installs what is missing, then sets $PY.
# Debian packages come from apt-get (only when a command is missing); Python packages go
# into .venv (re-installed when pyproject.toml, setup.py or a C source changed).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v redis-benchmark >/dev/null 2>&1 || need_apt+=(redis-tools)
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
command -v ethtool >/dev/null 2>&1 || need_apt+=(ethtool)
command -v ping >/dev/null 2>&1 || need_apt+=(iputils-ping)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
command -v gcc >/dev/null 2>&1 || need_apt+=(gcc)
command -v valgrind >/dev/null 2>&1 || need_apt+=(valgrind)  # scripts/instructions.py
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  echo "setup: installing Debian packages: ${need_apt[*]}" >&2
  $SUDO apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >&2
  # the Debian package starts a redis-server on 6379; our tests start their own on free ports
fi

PYTHON=${PYTHON:-python3}
VENV="$ROOT/.venv"
stamp_src=$( (cat pyproject.toml setup.py libos/*/*_build.py libos/*/*.c queueapi/*.c shim/*.c apps/*.c 2>/dev/null || true) | sha256sum | cut -c1-16)
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.stamp" 2>/dev/null)" != "$stamp_src" ]; then
  echo "setup: installing the project into $VENV" >&2
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip >&2
  "$VENV/bin/python" -m pip install -q -e ".[test,plot]" >&2
  echo "$stamp_src" > "$VENV/.stamp"
fi
PY="$VENV/bin/python"
export PY
