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
  "$PY" -m tb_lazy watch "$logdir" --exit-with "$$" &
  TB_WATCHER_PID=$!
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
