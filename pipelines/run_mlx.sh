#!/usr/bin/env bash
# Run series on MLX: pretrain -> SFT -> (DPO) -> (R1 reasoning SFT) -> inference sample,
# with TensorBoard started lazily when the first stage writes its first scalars.
set -Eeuo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR
source "$HERE/lib/common.sh"
# shellcheck source-path=SCRIPTDIR
source "$HERE/lib/tb_autostart.sh"

usage() {
  cat <<EOF
Usage: ${0##*/} [options] [-- training args...]

Chains the mlx_train stages: pretrain -> SFT -> DPO (opt-in) -> R1 (opt-in) -> inference.
Arguments after -- go to every training stage (e.g. -- --preset small --max_steps 2000).

Options:
  --smoke-test      tiny model, a few steps, bundled data (about a minute on 2 cores)
  --skip-pretrain   skip pretraining (SFT starts from \$OUT_DIR/pretrain if it holds a checkpoint:
                    its newest run's latest step)
  --skip-sft        skip SFT
  --run-dpo         run DPO after SFT (preference pairs, frozen reference model)
  --run-r1          run R1 reasoning SFT (<think>...</think><answer>...</answer>)
  --skip-infer      no inference sample at the end
  --infer-only      no training: sample from the last stage's newest run under \$OUT_DIR
                    (r1, else dpo, else sft, else pretrain)
  -h, --help        this text

Environment (defaults in brackets):
  SKIP_PRETRAIN, SKIP_SFT, RUN_DPO, RUN_R1   same as the flags, 1 = on [0]
  RUN_NAME   this run's name, shared by its stages [the start time, e.g. 20261206-103000]
  TF_DIR     TensorBoard logs: \$TF_DIR/<stage>/<run> [./tf_dir]; empty: no logs
  OUT_DIR    checkpoints: \$OUT_DIR/<stage>/<run>/step_N; \$OUT_DIR/<stage> itself is the
             latest saved model [./out]
  KEEP_RUNS  keep the checkpoints of only the newest N runs per stage, removing older
             runs' folders [empty: keep every run; their logs are always kept]
  DATA_DIR   bundled data, generated on first use [./data]
  PRETRAIN_DATA, SFT_DATA, DPO_DATA, R1_DATA   JSONL files [\$DATA_DIR/<stage>.jsonl]
  INFER_PROMPT   prompt for the inference sample
  PY         Python with the project installed [a .venv in the repo, set up on first run]
  MLX_LAUNCH run every training stage data-parallel under mlx.launch with these options,
             e.g. "mlx.launch -n 2 --backend ring" (two ranks on this machine) or
             "mlx.launch --hostfile hosts.json"; --batch_size is the global batch [empty: one process]

TensorBoard auto-start ([tb] auto-start):
  TB_AUTO    1: start TensorBoard when this run first logs; 0: never [1]
  TB_HOST    address TensorBoard listens on; 0.0.0.0 exposes it (no auth) [127.0.0.1]
  TB_PORT    preferred port; a busy one is replaced by a free one [6006]
  TB_KEEP    1: TensorBoard keeps running after the run; 0: stops with it [1]
  A watcher waits until an event file under \$TF_DIR gains data during this run (old
  runs' files and header-only files don't count); only then is TensorBoard
  started, as 'tensorboard --logdir \$TF_DIR' (or an already running one reused), and
  its URL printed once it answers. A run that trains nothing starts no TensorBoard.

Everything that can be checked is checked before the venv, data or training: the TB_*
variables, the training arguments (python -m mlx_train.train --check), and for --infer-only
a checkpoint to sample from.

Every run is its own: each stage starts from the checkpoint the stage before it wrote in
this run, and the sample comes from this run's last stage. To continue an interrupted run:
RUN_NAME=<its name> ${0##*/} -- --resume (a finished stage has nothing to do; a stage
that never saved starts from the stage before it).

Exit status: 0 done, 1 no checkpoint to sample from, a failing stage's own status,
2 bad usage (a flag, a TB_* value or a training argument), 130 interrupted.
EOF
}

SMOKE=0
SKIP_INFER=0
INFER_ONLY=0
EXTRA=()

parse_args() {
  while (($#)); do
    case $1 in
      --smoke-test) SMOKE=1 ;;
      --skip-pretrain) SKIP_PRETRAIN=1 ;;
      --skip-sft) SKIP_SFT=1 ;;
      --run-dpo) RUN_DPO=1 ;;
      --run-r1) RUN_R1=1 ;;
      --skip-infer) SKIP_INFER=1 ;;
      --infer-only) INFER_ONLY=1 ;;
      -h | --help)
        usage
        exit 0
        ;;
      --)
        shift
        EXTRA=("$@")
        return 0
        ;;
      *)
        err "unknown option: $1 (see --help)"
        exit 2
        ;;
    esac
    shift
  done
}

is_on() { [[ "${1:-0}" =~ ^(1|true|yes|on)$ ]]; }

settings() {
  : "${SKIP_PRETRAIN:=0}" "${SKIP_SFT:=0}" "${RUN_DPO:=0}" "${RUN_R1:=0}"
  TF_DIR=${TF_DIR-./tf_dir}
  OUT_DIR=${OUT_DIR:-./out}
  DATA_DIR=${DATA_DIR:-./data}
  PRETRAIN_DATA=${PRETRAIN_DATA:-$DATA_DIR/pretrain.jsonl}
  SFT_DATA=${SFT_DATA:-$DATA_DIR/sft.jsonl}
  DPO_DATA=${DPO_DATA:-$DATA_DIR/dpo.jsonl}
  R1_DATA=${R1_DATA:-$DATA_DIR/r1.jsonl}
  INFER_PROMPT=${INFER_PROMPT:-What is 12 + 7?}
  RUN_NAME=${RUN_NAME:-}
  KEEP_RUNS=${KEEP_RUNS:-}
  RUN_ARGS=()
  [[ -n "$KEEP_RUNS" ]] && RUN_ARGS+=(--keep_runs "$KEEP_RUNS")
  [[ -n "$RUN_NAME" ]] && RUN_ARGS+=(--run_name "$RUN_NAME")
  # MLX_LAUNCH: mlx.launch's options (a leading "mlx.launch" word is allowed), split on spaces
  LAUNCH=()
  read -r -a LAUNCH <<<"${MLX_LAUNCH:-}"
  if ((${#LAUNCH[@]})) && [[ "${LAUNCH[0]}" == mlx.launch ]]; then
    LAUNCH=("${LAUNCH[@]:1}")
  fi
  COMMON=()
  if ((SMOKE)); then
    COMMON=(--preset tiny --max_steps 40 --batch_size 8 --seq_len 128 --log_interval 5
      --eval_interval 20 --save_interval 40 --warmup_steps 5)
  fi
}

# planned_stages — the training stages this run will train, in order (none: nothing trains).
planned_stages() {
  PLANNED=()
  is_on "$SKIP_PRETRAIN" || PLANNED+=(pretrain)
  is_on "$SKIP_SFT" || PLANNED+=(sft)
  is_on "$RUN_DPO" && PLANNED+=(dpo)
  is_on "$RUN_R1" && PLANNED+=(r1)
  return 0
}

# data_for STAGE — the stage's JSONL file.
data_for() {
  case $1 in
    pretrain) printf '%s' "$PRETRAIN_DATA" ;;
    sft) printf '%s' "$SFT_DATA" ;;
    dpo) printf '%s' "$DPO_DATA" ;;
    r1) printf '%s' "$R1_DATA" ;;
  esac
}

# check_training_args — the training arguments (after --) and MLX_TRAIN_* variables are
# validated by every planned stage's trainer in --check mode: a typo fails now, not after an hour.
check_training_args() {
  local stage
  for stage in ${PLANNED[@]+"${PLANNED[@]}"}; do
    "$PY" -m mlx_train.train --check --task "$stage" --data_path "$(data_for "$stage")" \
      ${RUN_ARGS[@]+"${RUN_ARGS[@]}"} ${COMMON[@]+"${COMMON[@]}"} ${EXTRA[@]+"${EXTRA[@]}"} || exit 2
  done
}

# check_data_paths — a planned stage's own data file (one the script won't generate) must exist:
# a typo in R1_DATA fails now, not after pretrain and SFT.
check_data_paths() {
  local stage f
  for stage in ${PLANNED[@]+"${PLANNED[@]}"}; do
    f=$(data_for "$stage")
    if [[ "$f" != "$DATA_DIR"/* && ! -f "$f" ]]; then
      err "$(printf '%s' "$stage" | tr '[:lower:]' '[:upper:]')_DATA=$f: no such file (stage $stage)"
      exit 2
    fi
  done
}

# Bundled data is generated once, deterministically, when a planned stage's default path is missing.
ensure_data() {
  local stage f
  for stage in ${PLANNED[@]+"${PLANNED[@]}"}; do
    f=$(data_for "$stage")
    if [[ "$f" == "$DATA_DIR"/* && ! -f "$f" ]]; then
      info "generating the bundled data in $DATA_DIR"
      # its list of written files is a note, not output: stdout is for the URL and the sample
      run_child "$PY" -m mlx_train.data --out_dir "$DATA_DIR" >&2
      return 0
    fi
  done
}

# name_run — this run's name, once, before its first stage: RUN_NAME, or the start time with -2,
# -3… while a run of that name exists under $OUT_DIR or $TF_DIR. A default name is reserved by
# creating its folder for the first stage (mkdir fails if another run took it this second).
name_run() {
  if [[ -z "$RUN_NAME" ]]; then
    local base n=1 first="$OUT_DIR/${PLANNED[0]}"
    base=$(date +%Y%m%d-%H%M%S)
    RUN_NAME=$base
    mkdir -p "$first"
    until ! run_exists "$RUN_NAME" && mkdir "$first/$RUN_NAME" 2>/dev/null; do
      n=$((n + 1))
      RUN_NAME="$base-$n"
    done
    RUN_ARGS+=(--run_name "$RUN_NAME")
  fi
  local logs="" stages
  stages=$(IFS=,; printf '%s' "${PLANNED[*]}")
  ((${#PLANNED[@]} > 1)) && stages="{$stages}"
  [[ -n "$TF_DIR" ]] && logs=", logs in $TF_DIR/$stages/$RUN_NAME"
  info "run $RUN_NAME: checkpoints in $OUT_DIR/$stages/$RUN_NAME$logs"
}

# run_exists NAME — a run of that name has a folder under $OUT_DIR or $TF_DIR (any stage).
run_exists() {
  compgen -G "$OUT_DIR/*/$1" >/dev/null || { [[ -n "$TF_DIR" ]] && compgen -G "$TF_DIR/*/$1" >/dev/null; }
}

TRAINED=""   # the stages this run trained, space-separated
LAST_OUT=""

# train STAGE TASK DATA [INIT_FROM] — one training stage of this run; logs to $TF_DIR/STAGE/$RUN_NAME.
train() {
  local stage=$1 task=$2 data=$3 init=${4:-}
  local args=(--task "$task" --data_path "$data" --out_dir "$OUT_DIR/$stage")
  [[ -n "$TF_DIR" ]] && args+=(--tensorboard_dir "$TF_DIR/$stage")
  [[ -n "$init" ]] && args+=(--init_from "$init")
  info "stage $stage: training ($task)"
  # data parallel: mlx_train.launch is mlx.launch with the failing rank's exit status
  local launcher=()
  if ((${#LAUNCH[@]})); then
    launcher=("$PY" -m mlx_train.launch "${LAUNCH[@]}")
  fi
  # ${a[@]+"${a[@]}"}: an empty array is fine under set -u in bash before 4.4 (macOS) too
  run_child ${launcher[@]+"${launcher[@]}"} "$PY" -m mlx_train.train "${args[@]}" ${RUN_ARGS[@]+"${RUN_ARGS[@]}"} \
    ${COMMON[@]+"${COMMON[@]}"} ${EXTRA[@]+"${EXTRA[@]}"}
  TRAINED+=" $stage"
  LAST_OUT="$OUT_DIR/$stage/$RUN_NAME"
}

# previous STAGE... — where the next stage starts: the first STAGE this run trained (its
# folder of this run: exactly the checkpoint it wrote last), else the first stage folder that
# holds a checkpoint (its newest run's latest step); empty if none.
previous() {
  local stage
  for stage in "$@"; do
    if [[ " $TRAINED " == *" $stage "* ]]; then
      printf '%s' "$OUT_DIR/$stage/$RUN_NAME"
      return 0
    fi
    if has_checkpoint "$OUT_DIR/$stage"; then
      printf '%s' "$OUT_DIR/$stage"
      return 0
    fi
  done
}

stage_pretrain() { train pretrain pretrain "$PRETRAIN_DATA"; }
stage_sft() { train sft sft "$SFT_DATA" "$(previous pretrain)"; }
stage_dpo() { train dpo dpo "$DPO_DATA" "$(previous sft pretrain)"; }
stage_r1() { train r1 r1 "$R1_DATA" "$(previous dpo sft pretrain)"; }

# infer_checkpoint — the checkpoint the inference sample uses; exit 1 when there is none
# (checked before any venv work when nothing trains first).
infer_checkpoint() {
  local checkpoint=${LAST_OUT:-$(previous r1 dpo sft pretrain)}
  if [[ -z "$checkpoint" ]]; then
    err "no checkpoint under $OUT_DIR to sample from; train a stage first (e.g. bash pipelines/run_mlx.sh --smoke-test)"
    exit 1
  fi
  printf '%s' "$checkpoint"
}

stage_infer() {
  local checkpoint
  checkpoint=$(infer_checkpoint)
  info "inference sample from $checkpoint"
  run_child "$PY" -m mlx_train.infer --checkpoint "$checkpoint" --prompt "$INFER_PROMPT" --chat
}

on_exit() { tb_autostart_finish; }

main() {
  parse_args "$@"
  settings
  planned_stages
  # Everything that can be checked is checked before anything costly (venv, data, training).
  tb_check_env
  check_data_paths
  install_traps on_exit
  if ((INFER_ONLY)) || { ((${#PLANNED[@]} == 0)) && ((!SKIP_INFER)); }; then
    infer_checkpoint >/dev/null
  fi
  ensure_env
  if ((INFER_ONLY)); then
    stage_infer
    return 0
  fi
  check_training_args
  ensure_data
  ((${#PLANNED[@]})) && name_run
  # [tb] auto-start: watch $TF_DIR; TensorBoard starts when this run first writes event data.
  if [[ -n "$TF_DIR" ]] && ((${#PLANNED[@]})); then
    tb_autostart "$TF_DIR"
  fi
  local stage
  for stage in ${PLANNED[@]+"${PLANNED[@]}"}; do
    "stage_$stage"
  done
  ((SKIP_INFER)) || stage_infer
}

main "$@"
