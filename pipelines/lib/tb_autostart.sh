# shellcheck shell=bash
# TensorBoard auto-start for the run-series scripts, shared by every pipeline.
#
# No prediction from flags: a tb_lazy watcher waits until this run writes event data under the
# log folder and only then starts TensorBoard (or reuses one already serving it), and
# prints "[tensorboard] http://HOST:PORT (pid=N)" once it answers. A run that never logs
# starts nothing. Variables: TB_AUTO (1), TB_HOST (127.0.0.1), TB_PORT (6006), TB_KEEP (1).
#
# Needs: PY (the interpreter with the project installed) and lib/common.sh.

TB_WATCHER_PID=""

# [tb] auto-start: tb_autostart DIR — spawn the watcher for DIR unless TB_AUTO=0.
tb_autostart() {
  local logdir=$1
  case "${TB_AUTO:-1}" in
    0 | false | no | off) return 0 ;;
  esac
  [[ -n "$logdir" ]] || return 0
  # Training stages start their own watcher too (library autostart); it finds ours and
  # reuses our TensorBoard quietly, so the URL is printed once per run.
  export TB_LAZY_QUIET_REUSE=1
  spawn TB_WATCHER_PID "$PY" -m tb_lazy watch "$logdir" --exit-with "$$"
}

# tb_check_env — bad TB_* values end the script now (one line naming the variable, exit 2),
# before any venv work, data or training. Runs tb_lazy/config.py as a file with the system
# python3 (standard library only; the package's __init__ needs the venv's watchdog).
tb_check_env() {
  local python
  python=$(command -v python3 || true)
  python=${python:-${PY:-}}
  [[ -n "$python" ]] || return 0   # no interpreter yet: ensure_env says so
  "$python" -I "$REPO/tb_lazy/config.py" "${0##*/}" || exit 2
}

# tb_autostart_finish — end the watcher: one still waiting stops at once (nothing was
# logged, nothing starts); one starting TensorBoard finishes and prints the URL first;
# with TB_KEEP=0 it stops TensorBoard. Safe to call twice.
tb_autostart_finish() {
  stop_child "$TB_WATCHER_PID"
  TB_WATCHER_PID=""
}

# tb_logdir_from_args ARGS... — the value of --tensorboard_dir DIR / --tensorboard_dir=DIR, if any.
tb_logdir_from_args() {
  local found=""
  while (($#)); do
    case $1 in
      --tensorboard_dir=*) found=${1#--tensorboard_dir=} ;;
      --tensorboard_dir)
        if (($# > 1)); then found=$2; shift; fi
        ;;
    esac
    shift
  done
  printf '%s' "$found"
}
