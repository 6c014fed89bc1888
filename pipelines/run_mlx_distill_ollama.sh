#!/usr/bin/env bash
# Distillation: a teacher model served over HTTP (Ollama, or any OpenAI-compatible server)
# answers generated questions; the student is SFT-trained on its answers while more are
# being generated. TensorBoard starts lazily when training logs (--tensorboard_dir).
set -Eeuo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR
source "$HERE/lib/common.sh"
# shellcheck source-path=SCRIPTDIR
source "$HERE/lib/tb_autostart.sh"

usage() {
  cat <<EOF
Usage: ${0##*/} [options] [--] [training args...]

1. asks the teacher for COLD_SAMPLES answers (fails early if it can't be reached),
2. keeps generating in the background up to TOTAL_SAMPLES (appended to \$DISTILL_DATA;
   an interrupted run resumes without duplicates),
3. SFT-trains the student on the growing file (re-read each epoch).
Arguments after the script's own options go to training (python -m mlx_train.train),
e.g. --tensorboard_dir ./tf_dir/distill --max_steps 500.

Options:
  --smoke-test   tiny student, few samples and steps
  -h, --help     this text

Teacher (defaults in brackets):
  TEACHER_API    ollama (native /api/chat) or openai (/v1/chat/completions) [ollama]
  OLLAMA_URL     teacher base URL [http://127.0.0.1:11434]; TEACHER_URL overrides it
  OLLAMA_MODEL   teacher model name [qwen3:0.6b]
  GEN_WORKERS    parallel requests [4]
  COLD_SAMPLES   samples before training starts [32]
  TOTAL_SAMPLES  samples in all [256]
  PROMPTS_FILE   your prompts, one per line or JSONL {"prompt": ...} [built-in generator]
  TEACHER_MAX_TOKENS  longest answer in tokens [512; smoke test: 64]
  TEACHER_THINK  let the teacher think first: 0, 1, low|medium|high, or default (send
                 nothing) [0 for ollama: qwen3 would spend the answer's tokens thinking;
                 default for openai]
  TEACHER_API_KEY  sent as "Authorization: Bearer ..." (hosted servers); never printed
Student:
  DISTILL_DATA   generated SFT data [\$DATA_DIR/distill_sft.jsonl, DATA_DIR=./data]
  OUT_DIR        checkpoints go to \$OUT_DIR/distill [./out]
  INIT_FROM      student to start from [newest of \$OUT_DIR/sft, \$OUT_DIR/pretrain; else new]
  PY             Python with the project installed [a .venv in the repo, set up on first run]

TensorBoard auto-start ([tb] auto-start): only when --tensorboard_dir DIR (or
--tensorboard_dir=DIR) is among the training args and TB_AUTO is not 0: a watcher waits
until this run writes event data under DIR, then starts 'tensorboard --logdir DIR' (or reuses
one) and prints its URL. TB_HOST [127.0.0.1], TB_PORT [6006], TB_KEEP [1] as in run_mlx.sh.

The TB_* variables and the training arguments (python -m mlx_train.train --check, which
also checks INIT_FROM) are checked before the teacher is asked anything.

Exit status: 0 done, 3 teacher unreachable, a failing step's own status, 2 bad usage
(a TB_* value or a training argument), 130 interrupted.
EOF
}

SMOKE=0
TRAIN_ARGS=()

parse_args() {
  while (($#)); do
    case $1 in
      --smoke-test) SMOKE=1 ;;
      -h | --help)
        usage
        exit 0
        ;;
      --)
        shift
        break
        ;;
      *) break ;;
    esac
    shift
  done
  TRAIN_ARGS=("$@")
}

settings() {
  DATA_DIR=${DATA_DIR:-./data}
  OUT_DIR=${OUT_DIR:-./out}
  DISTILL_DATA=${DISTILL_DATA:-$DATA_DIR/distill_sft.jsonl}
  SMOKE_ARGS=()
  if ((SMOKE)); then
    export COLD_SAMPLES=${COLD_SAMPLES:-8} TOTAL_SAMPLES=${TOTAL_SAMPLES:-16}
    TEACHER_MAX_TOKENS=${TEACHER_MAX_TOKENS:-64}
    SMOKE_ARGS=(--preset tiny --max_steps 20 --batch_size 4 --seq_len 128 --log_interval 5
      --eval_interval 10 --save_interval 20 --warmup_steps 2)
  fi
}

student_init() {
  local stage
  if [[ -n "${INIT_FROM:-}" ]]; then
    printf '%s' "$INIT_FROM"
    return 0
  fi
  for stage in sft pretrain; do
    if has_checkpoint "$OUT_DIR/$stage"; then
      printf '%s' "$OUT_DIR/$stage"
      return 0
    fi
  done
}

GEN_PID=""

# generator_command — the teacher-data generator's command line, in GEN_CMD.
generator_command() {
  GEN_CMD=("$PY" -m mlx_train.distill --out "$DISTILL_DATA")
  [[ -n "${TEACHER_MAX_TOKENS:-}" ]] && GEN_CMD+=(--max-tokens "$TEACHER_MAX_TOKENS")
  return 0
}

# student_args — the student's training arguments, in STUDENT_ARGS (its start in STUDENT_INIT).
student_args() {
  STUDENT_INIT=$(student_init)
  STUDENT_ARGS=(--task sft --data_path "$DISTILL_DATA" --reload_data --out_dir "$OUT_DIR/distill")
  [[ -n "$STUDENT_INIT" ]] && STUDENT_ARGS+=(--init_from "$STUDENT_INIT")
  # ${a[@]+"${a[@]}"}: an empty array is fine under set -u in bash before 4.4 (macOS) too
  STUDENT_ARGS+=(${SMOKE_ARGS[@]+"${SMOKE_ARGS[@]}"} ${TRAIN_ARGS[@]+"${TRAIN_ARGS[@]}"})
}

# check_student — the training arguments, MLX_TRAIN_* variables and INIT_FROM are validated
# (mlx_train.train --check) before the teacher is asked anything.
check_student() {
  student_args
  "$PY" -m mlx_train.train --check "${STUDENT_ARGS[@]}" || exit 2
}

train_student() {
  student_args
  info "training the student on $DISTILL_DATA${STUDENT_INIT:+ (from $STUDENT_INIT)}"
  run_child "$PY" -m mlx_train.train "${STUDENT_ARGS[@]}"
}

on_exit() {
  stop_child "$GEN_PID"
  GEN_PID=""
  tb_autostart_finish
}

main() {
  parse_args "$@"
  settings
  # Everything that can be checked is checked before anything costly (venv, teacher, training).
  tb_check_env
  install_traps on_exit
  ensure_env
  check_student
  mkdir -p "$(dirname "$DISTILL_DATA")"
  # [tb] auto-start: only when training is given --tensorboard_dir.
  tb_autostart "$(tb_logdir_from_args ${TRAIN_ARGS[@]+"${TRAIN_ARGS[@]}"})"
  info "asking the teacher for the first samples"
  generator_command
  run_child "${GEN_CMD[@]}" --until cold
  spawn GEN_PID "${GEN_CMD[@]}" --until total
  train_student
  if kill -0 "$GEN_PID" 2>/dev/null; then
    info "training finished before generation; stopping it (a re-run resumes where it stopped)"
  fi
  stop_child "$GEN_PID"
  GEN_PID=""
}

main "$@"
