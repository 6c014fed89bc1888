#!/usr/bin/env bash
# The base package alone — what `pip install tb-lazy` gives someone who only wants the watcher for
# their own (PyTorch, JAX, …) runs — built as users get it and installed in a fresh virtual environment:
#   0. `python -m build` makes an sdist and, from it, a wheel; the wheel is what gets installed,
#   1. none of the training stack is installed (mlx, mlx-lm, tensorboardX, tokenizers, jinja2), nor
#      mlx_train (it runs from a clone), and `tb-lazy --version` prints the version,
#   2. every tb_lazy module imports, and none of them pulls in numpy, tensorboardX or mlx,
#   3. `tb-lazy watch DIR` started before a tensorboardX run prints its `[tensorboard] http://…`
#      line once the run writes a scalar, that TensorBoard serves the scalar, and
#      `tb-lazy stop --all` stops it (checked by its PID).
# Everything lives in one temporary folder (dist, venv, logs, tb_lazy's state, TMPDIR), removed at exit.
#
# Usage: bash tests/base_install_check.sh [WRITER_PY]
#   WRITER_PY  a Python with tensorboardX and build (the `[dev]` install), used to build the
#              package and to write the run's event file [the repository's .venv/bin/python]
set -Eeuo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WRITER_PY=${1:-$REPO/.venv/bin/python}
[[ "$WRITER_PY" == */* && "$WRITER_PY" != /* ]] && WRITER_PY=$PWD/$WRITER_PY  # the check cd's away
WORK=""
WATCH_PID=""
TB_PID=""

err() { printf 'base_install_check: error: %s\n' "$*" >&2; }
log() { printf '[base_install_check] %s\n' "$*" >&2; }

# cleanup — whatever this check started is stopped by its PID; the temporary folder goes.
cleanup() {
  local pid
  for pid in "$WATCH_PID" "$TB_PID"; do
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
    fi
  done
  [[ -n "$WATCH_PID" ]] && wait "$WATCH_PID" 2>/dev/null
  [[ -n "$WORK" ]] && rm -rf "$WORK"
  return 0
}

# wait_gone PID SECONDS — true once PID has ended.
wait_gone() {
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    kill -0 "$1" 2>/dev/null || return 0
    sleep 0.1
  done
  return 1
}

install_base() {
  local wheels version
  log "python -m build: an sdist, and a wheel built from it"
  "$WRITER_PY" -m build --outdir "$WORK/dist" "$REPO" >"$WORK/build.log" 2>&1 || {
    err "python -m build failed; its output: $(tail -n 20 "$WORK/build.log")"
    return 1
  }
  wheels=("$WORK"/dist/tb_lazy-*.whl)
  if [[ ${#wheels[@]} -ne 1 || ! -f "${wheels[0]}" ]] || ! compgen -G "$WORK/dist/tb_lazy-*.tar.gz" >/dev/null; then
    err "expected one wheel and one sdist in $WORK/dist, got: $(ls "$WORK/dist")"
    return 1
  fi
  log "fresh venv with the base package only: pip install ${wheels[0]##*/}"
  python3 -m venv "$WORK/venv"
  "$BASE_PY" -m pip install -q --disable-pip-version-check "${wheels[0]}"
  version=$("$WORK/venv/bin/tb-lazy" --version)
  log "tb-lazy --version: $version"
  [[ "$version" == *"$("$BASE_PY" -c 'import tb_lazy; print(tb_lazy.__version__)')"* ]] || {
    err "tb-lazy --version printed '$version'"
    return 1
  }
}

check_no_training_stack() {
  local module
  for module in mlx mlx_lm tensorboardX tokenizers jinja2 mlx_train; do
    if (cd "$WORK" && "$BASE_PY" -c "import $module" 2>/dev/null); then
      err "the base install brought in '$module' (training stack only: pip install 'tb-lazy[train]')"
      return 1
    fi
  done
  "$BASE_PY" - <<'EOF'
import importlib
import pkgutil
import sys

import tb_lazy

for info in pkgutil.walk_packages(tb_lazy.__path__, "tb_lazy."):
    if info.name != "tb_lazy.__main__":
        importlib.import_module(info.name)
loaded = {name.split(".")[0] for name in sys.modules} & {"numpy", "tensorboardX", "mlx", "mlx_lm"}
if loaded:
    sys.exit(f"base_install_check: error: importing tb_lazy loaded {sorted(loaded)}")
EOF
}

watch_end_to_end() {
  local logdir="$WORK/logs" out="$WORK/watch.out" line url
  export TB_LAZY_STATE_DIR="$WORK/state" TMPDIR="$WORK/tmp"
  mkdir -p "$TMPDIR"
  unset TB_AUTO TB_HOST TB_PORT TB_KEEP PYTHONPATH
  # run from the temporary folder: the installed package is what runs, not the repository's
  cd "$WORK"
  log "tb-lazy watch, then a tensorboardX run writes one scalar"
  "$WORK/venv/bin/tb-lazy" watch "$logdir" --timeout 120 >"$out" &
  WATCH_PID=$!
  "$WRITER_PY" -c '
import sys
from tensorboardX import SummaryWriter
with SummaryWriter(sys.argv[1]) as writer:
    writer.add_scalar("train/loss", 1.5, 0)
' "$logdir/run1"
  if ! wait "$WATCH_PID"; then
    WATCH_PID=""
    err "tb-lazy watch failed; its output: $(cat "$out")"
    return 1
  fi
  WATCH_PID=""
  line=$(cat "$out")
  if [[ ! "$line" =~ ^\[tensorboard\]\ (http://127\.0\.0\.1:[0-9]+)\ \(pid=([0-9]+)\)$ ]]; then
    err "expected one '[tensorboard] http://HOST:PORT (pid=N)' line, got: '$line'"
    return 1
  fi
  url=${BASH_REMATCH[1]}
  TB_PID=${BASH_REMATCH[2]}
  log "$line"
  "$BASE_PY" - "$url" <<'EOF'
import json
import sys
import time
import urllib.request

url = sys.argv[1] + "/data/plugin/scalars/tags"
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
deadline = time.monotonic() + 60
while True:
    with opener.open(url, timeout=10) as resp:
        tags = json.load(resp)
    if "train/loss" in tags.get("run1", {}):
        break
    if time.monotonic() > deadline:
        sys.exit(f"base_install_check: error: TensorBoard at {url} never showed train/loss: {tags}")
    time.sleep(0.5)
EOF
  "$WORK/venv/bin/tb-lazy" stop --all >&2
  if ! wait_gone "$TB_PID" 10; then
    err "TensorBoard (pid $TB_PID) still running after 'tb-lazy stop --all'"
    return 1
  fi
  TB_PID=""
}

main() {
  if ! "$WRITER_PY" -c 'import tensorboardX, build' 2>/dev/null; then
    err "WRITER_PY=$WRITER_PY can't import tensorboardX and build (give the [dev] install's Python)"
    exit 2
  fi
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/tb-lazy-base.XXXXXX")
  BASE_PY="$WORK/venv/bin/python"
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  install_base
  check_no_training_stack
  watch_end_to_end
  log "ok: the base package installs the watcher alone, and it serves a tensorboardX run"
}

main "$@"
