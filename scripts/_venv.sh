# Sourced by scripts/dev and scripts/test: make .venv and install the project into it, once
# per change of pyproject.toml. Needs only Python 3.11+ with pip (no Redis: it is embedded).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
EXTRAS="${1:-}"
stamp="$VENV/.installed$EXTRAS"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "installing oliai-bridge into $VENV ..." >&2
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e ".$EXTRAS"
  touch "$stamp"
fi
