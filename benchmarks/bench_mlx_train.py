"""Benchmark: mlx_train's compiled step against mlx-lm's trainer step on the same model and
the same batches; the wall time of a smoke-sized pretrain + SFT run; and data parallelism:
one process against two ranks under ``mlx.launch`` (ring backend, loopback) on the same cores.

    python benchmarks/bench_mlx_train.py [--steps 10] [--skip-smoke] [--skip-ranks]

Not a test: it prints numbers (tokens/s of each step and their ratio; smoke wall time; tokens/s
of 1 process and 2 ranks, and the scaling efficiency)."""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

from mlx_train.blas import blas_note, reexec_with_fast_blas


def bench_steps(*, steps: int, hidden: int, layers: int, vocab: int, seq_len: int,
                batch: int) -> dict[str, float]:
    """Tokens/s of mlx_train's step and of mlx-lm's (default_loss + its compiled step idiom)."""
    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim
    import numpy as np
    from mlx_lm.tuner.trainer import default_loss

    from mlx_train.model import build_model, model_config
    from mlx_train.stages import lm_loss
    from mlx_train.trainer import make_step

    dims = dict(hidden_size=hidden, num_layers=layers, num_heads=hidden // 64,
                num_kv_heads=hidden // 64, intermediate_size=hidden * 3)
    cfg = model_config(dims, vocab_size=vocab, max_len=seq_len, eos_token_ids=[0])
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, vocab, (batch, seq_len + 1), dtype=np.int32) for _ in range(steps + 3)]

    def fresh():
        mx.random.seed(0)
        model = build_model(cfg)
        optimizer = optim.AdamW(learning_rate=1e-3, weight_decay=0.01)
        optimizer.init(model.trainable_parameters())
        return model, optimizer

    # mlx_train: the step used by every stage
    model, optimizer = fresh()
    ours = make_step(model, optimizer, lm_loss, accum_steps=1, grad_clip=1.0)
    ones = mx.ones((batch, seq_len))

    def run_ours(b):
        out = ours({"tokens": mx.array(b), "weights": ones}, None, True)
        mx.eval(model.state, optimizer.state, out[0])
        return out[0]

    # mlx-lm: its default_loss and the compiled step of mlx_lm.tuner.trainer.train
    model2, optimizer2 = fresh()
    state = [model2.state, optimizer2.state, mx.random.state]
    loss_value_and_grad = nn.value_and_grad(model2, default_loss)

    @partial(mx.compile, inputs=state, outputs=state)
    def theirs(b, lengths):
        (lvalue, toks), grad = loss_value_and_grad(model2, b, lengths)
        grad, _ = optim.clip_grad_norm(grad, 1.0)
        optimizer2.update(model2, grad)
        return lvalue, toks

    lengths = mx.array([[0, seq_len]] * batch)

    def run_theirs(b):
        lvalue, toks = theirs(mx.array(b), lengths)
        mx.eval(state, lvalue, toks)
        return lvalue

    results = {}
    for name, fn in (("mlx_train", run_ours), ("mlx_lm", run_theirs)):
        first = [fn(b).item() for b in batches[:3]]        # compile + warm-up
        tic = time.perf_counter()
        for b in batches[3:]:
            fn(b)
        elapsed = time.perf_counter() - tic
        results[name] = steps * batch * seq_len / elapsed
        results[f"{name}_first_loss"] = first[0]
    return results


def smoke(tmp: Path) -> float:
    """Wall seconds of: bundled data, tiny pretrain (100 steps), tiny SFT (60 steps)."""
    env = dict(os.environ, TB_AUTO="0")
    train = [sys.executable, "-m", "mlx_train.train", "--preset", "tiny", "--seq_len", "128",
             "--log_interval", "50", "--eval_interval", "100", "--eval_batches", "2"]
    tic = time.perf_counter()
    for cmd in ([sys.executable, "-m", "mlx_train.data", "--out_dir", str(tmp / "data")],
                train + ["--task", "pretrain", "--data_path", str(tmp / "data/pretrain.jsonl"),
                         "--out_dir", str(tmp / "pretrain"), "--max_steps", "100",
                         "--tensorboard_dir", str(tmp / "tb/pretrain")],
                train + ["--task", "sft", "--data_path", str(tmp / "data/sft.jsonl"),
                         "--out_dir", str(tmp / "sft"), "--init_from", str(tmp / "pretrain"),
                         "--max_steps", "60", "--tensorboard_dir", str(tmp / "tb/sft")]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"smoke step failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr}")
        last = [line for line in proc.stderr.splitlines() if "step" in line and "loss" in line]
        if last:
            print(f"  {last[-1]}")
    return time.perf_counter() - tic


RANKS_MODEL = ["--preset", "tiny", "--hidden_size", "256", "--num_layers", "4", "--num_heads", "4",
               "--intermediate_size", "768", "--vocab_size", "2048", "--seq_len", "256",
               "--batch_size", "8", "--warmup_steps", "2", "--log_interval", "5",
               "--eval_interval", "1000", "--save_interval", "1000", "--sample_tokens", "0"]


def train_tokens_per_sec(cmd: list[str], *, threads: int, steps: int) -> float:
    """Median global tokens/s over the progress windows after the first (compile, warm-up)."""
    env = dict(os.environ, TB_AUTO="0", OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    proc = subprocess.run(cmd + ["--max_steps", str(steps)], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"run failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr}")
    rates = [float(line.split(" tok/s")[0].rsplit("| ", 1)[1].replace(",", ""))
             for line in proc.stderr.splitlines() if " tok/s" in line]
    return statistics.median(rates[1:] or rates)


def bench_ranks(tmp: Path, *, steps: int) -> dict[str, float]:
    """Tokens/s of one process (BLAS threads = cores) and of two ranks (cores / 2 each)."""
    cores = os.cpu_count() or 2
    subprocess.run([sys.executable, "-m", "mlx_train.data", "--out_dir", str(tmp / "data")],
                   check=True, capture_output=True)
    train = [sys.executable, "-m", "mlx_train.train", "--task", "pretrain", *RANKS_MODEL,
             "--data_path", str(tmp / "data/pretrain.jsonl")]
    one = train_tokens_per_sec(train + ["--out_dir", str(tmp / "one")], threads=cores, steps=steps)
    launch = [sys.executable, "-m", "mlx_train.launch", "-n", "2", "--backend", "ring"]
    two = train_tokens_per_sec(launch + train + ["--out_dir", str(tmp / "two")],
                               threads=max(1, cores // 2), steps=steps)
    return {"cores": cores, "one": one, "two": two}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per trainer (10)")
    parser.add_argument("--skip-smoke", action="store_true", help="no smoke run")
    parser.add_argument("--skip-ranks", action="store_true", help="no 1-process vs 2-rank run")
    parser.add_argument("--rank-steps", type=int, default=25, help="steps of each data-parallel run (25)")
    args = parser.parse_args()
    print(f"cpu cores: {os.cpu_count()}")
    shape = dict(hidden=256, layers=4, vocab=2048, seq_len=256, batch=8)
    print("step benchmark:", ", ".join(f"{k}={v}" for k, v in shape.items()))
    r = bench_steps(steps=args.steps, **shape)
    print(f"  mlx_train step : {r['mlx_train']:9,.0f} tokens/s  (first loss {r['mlx_train_first_loss']:.4f})")
    print(f"  mlx_lm step    : {r['mlx_lm']:9,.0f} tokens/s  (first loss {r['mlx_lm_first_loss']:.4f})")
    print(f"  ratio mlx_train / mlx_lm: {r['mlx_train'] / r['mlx_lm']:.2f}")
    if not args.skip_smoke:
        with tempfile.TemporaryDirectory() as tmp:
            print("smoke run: data + tiny pretrain (100 steps) + tiny SFT (60 steps), seq_len 128")
            print(f"  wall time: {smoke(Path(tmp)):.1f} s")
    if not args.skip_ranks:
        with tempfile.TemporaryDirectory() as tmp:
            print(f"data parallel: pretrain {args.rank_steps} steps, hidden 256, 4 layers, seq 256, "
                  "global batch 8; same cores for both")
            r = bench_ranks(Path(tmp), steps=args.rank_steps)
            half = max(1, r["cores"] // 2)
            print(f"  1 process, {r['cores']} BLAS threads       : {r['one']:9,.0f} tokens/s")
            print(f"  2 ranks, {half} BLAS thread(s) each (ring): {r['two']:9,.0f} tokens/s")
            print(f"  scaling efficiency (2 ranks / 1 process, same cores; 1.00 = no cost): "
                  f"{r['two'] / r['one']:.2f}")
    return 0


if __name__ == "__main__":
    reexec_with_fast_blas([os.path.abspath(__file__), *sys.argv[1:]])
    print(blas_note() or "[blas] (not Linux: MLX's own BLAS)")
    sys.exit(main())
