# shellcheck shell=bash
# Shared by the run-series scripts: messages and the Python environment.

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

err() { printf '%s: error: %s\n' "${0##*/}" "$*" >&2; }
info() { printf '[%s] %s\n' "${0##*/}" "$*" >&2; }

# ensure_env — set PY to an interpreter with the project installed. PY given by the
# user is checked, never changed; otherwise REPO/.venv is created and the project
# installed into it the first time (later runs only check it).
ensure_env() {
  local probe='import tb_lazy, mlx_train, mlx.core, mlx_lm, tensorboardX, watchdog'
  if [[ -n "${PY:-}" ]]; then
    if ! "$PY" -c "$probe" 2>/dev/null; then
      err "PY=$PY can't import the project; install it there with: $PY -m pip install -e '${REPO}[dev]'"
      exit 2
    fi
    return 0
  fi
  PY="$REPO/.venv/bin/python"
  local stamp="$REPO/.venv/.installed"
  if [[ -x "$PY" && -f "$stamp" && "$stamp" -nt "$REPO/pyproject.toml" ]] && "$PY" -c "$probe" 2>/dev/null; then
    return 0
  fi
  info "first run: setting up $REPO/.venv (python3 -m venv, pip install -e '.[dev]'; once)"
  python3 -m venv "$REPO/.venv"
  "$PY" -m pip install -q --upgrade pip
  "$PY" -m pip install -q -e "${REPO}[dev]"
  touch "$stamp"
}
