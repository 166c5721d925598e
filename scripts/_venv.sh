# Sourced by scripts/dev and scripts/test: make .venv and install into it exactly the pinned
# dependencies (requirements.txt, or requirements-dev.txt with the test tools; both with hashes,
# written by scripts/lock), then the project itself without resolving anything again. Once per
# change of the pins or pyproject.toml. Needs only Python 3.11+ with pip (Redis is embedded).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
EXTRAS="${1:-}"
LOCK=requirements.txt
if [ -n "$EXTRAS" ]; then
  LOCK=requirements-dev.txt
fi
stamp="$VENV/.installed$EXTRAS"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ "$LOCK" -nt "$stamp" ]; then
  echo "installing oliai-bridge into $VENV from $LOCK ..." >&2
  pip=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
  "${pip[@]}" --require-hashes -r "$LOCK"
  # The build backend is pinned in the lock too, so no isolated build fetches another.
  "${pip[@]}" --no-deps --no-build-isolation --editable .
  touch "$stamp"
fi
