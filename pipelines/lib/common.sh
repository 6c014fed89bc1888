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
  local started=$SECONDS
  info "first run: creating $REPO/.venv and installing the project into it (once; a few minutes)"
  if ! python3 -m venv "$REPO/.venv" >&2; then
    err "could not create $REPO/.venv with python3 -m venv (Debian/Ubuntu: apt-get install python3-venv)"
    exit 1
  fi
  # pip's own progress goes to stderr: stdout carries only what a caller would pipe
  info "installing: pip (upgrade)"
  "$PY" -m pip install --upgrade pip >&2
  # [dev] is the watcher, the training stack ([train]: mlx, mlx-lm, tensorboardX, ...) and pytest
  info "installing: the project and its dependencies (mlx, mlx-lm, tensorboard, tensorboardX, watchdog, psutil, tokenizers, numpy, jinja2, pytest)"
  "$PY" -m pip install -e "${REPO}[dev]" >&2
  touch "$stamp"
  info "set up $REPO/.venv in $((SECONDS - started)) s"
}

# has_checkpoint DIR — true if stage folder DIR holds a finished step_* checkpoint of a run
# (DIR/<run>/step_*, or DIR/step_* from before run names).
has_checkpoint() { compgen -G "$1/*/step_*/config.json" >/dev/null || compgen -G "$1/step_*/config.json" >/dev/null; }

# stop_child PID — ask a background child to end (SIGTERM) and wait for it. Safe on "".
stop_child() {
  [[ -n "${1:-}" ]] || return 0
  kill -TERM "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

CHILD_PID=""
EXIT_TRAP=""

# spawn VAR CMD... — start CMD in the background and store its PID in VAR. The EXIT trap is
# lifted around the fork: a child signalled before it has exec'd CMD would otherwise run the
# script's EXIT trap itself (and bash then prints "wait_for: No record of process N").
spawn() {
  local var=$1
  shift
  trap - EXIT
  "$@" &
  printf -v "$var" '%s' "$!"
  restore_exit_trap
}

# restore_exit_trap — put the script's EXIT trap (install_traps CLEANUP) back in place.
restore_exit_trap() {
  if [[ -n "$EXIT_TRAP" ]]; then
    # shellcheck disable=SC2064  # expand EXIT_TRAP now
    trap "$EXIT_TRAP" EXIT
  fi
}

# run_child CMD... — run CMD and return its status; a signal to the script reaches it at
# once (bash runs traps only between commands, so a foreground stage would hold it up).
run_child() {
  local status=0
  spawn CHILD_PID "$@"
  wait "$CHILD_PID" || status=$?
  CHILD_PID=""
  return "$status"
}

# on_signal STATUS — trap body for INT/TERM: stop the running stage, then exit STATUS
# (the EXIT trap does the rest of the cleanup).
on_signal() {
  stop_child "$CHILD_PID"
  CHILD_PID=""
  # a signal in spawn's instant without the EXIT trap still cleans up (in the script's own
  # shell only: a child forked by spawn that hasn't exec'd yet just exits)
  if [[ "${BASHPID:-$$}" == "$$" ]]; then
    restore_exit_trap
  fi
  exit "$1"
}

# install_traps CLEANUP — run CLEANUP on exit; Ctrl-C exits 130, TERM 143.
install_traps() {
  EXIT_TRAP=$1
  restore_exit_trap
  trap 'on_signal 130' INT
  trap 'on_signal 143' TERM
}
