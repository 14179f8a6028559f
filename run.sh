#!/usr/bin/env bash
# ./run.sh [FLAGS...]   set up .venv on first use, then run the main experiment
# ./run.sh test [ARGS]  set up .venv (with test extras), then run the test suite
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
VENV=.venv

if [[ "${1:-}" == "test" ]]; then
  extras="tfds,dev"
else
  extras=""
fi

"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || {
  echo "run.sh: Python >= 3.11 is needed (set PYTHON=/path/to/python3.11)" >&2
  exit 1
}

# Re-install only when pyproject.toml or the requested extras change.
stamp="$VENV/.installed-$(echo "${extras:-base}" | tr ',' '-')"
want=$(cat pyproject.toml | sha256sum | cut -d' ' -f1)
if [[ ! -x "$VENV/bin/python" ]]; then
  echo "run.sh: creating $VENV" >&2
  "$PYTHON" -m venv "$VENV"
fi
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  echo "run.sh: installing jax-vae${extras:+[$extras]} into $VENV (first run only)" >&2
  "$VENV/bin/python" -m pip install --quiet --upgrade pip >&2
  "$VENV/bin/python" -m pip install --quiet -e ".${extras:+[$extras]}" >&2
  echo "$want" > "$stamp"
fi

if [[ "${1:-}" == "test" ]]; then
  shift
  exec "$VENV/bin/python" -m pytest "$@"
fi
# The run's clock (metrics.json's timings) starts here, not at the install above.
JAX_VAE_EXEC_TIME=$(date +%s.%N) exec "$VENV/bin/python" -m experiments.main "$@"
