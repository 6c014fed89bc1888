"""Benchmark: mlx_train's compiled step against mlx-lm's trainer step on the same model and
the same batches, then the wall time of a smoke-sized pretrain + SFT run.

    python benchmarks/bench_mlx_train.py [--steps 10] [--skip-smoke]

Not a test: it prints numbers (tokens/s of each step and their ratio; smoke wall time)."""

from __future__ import annotations

import argparse
import os
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per trainer (10)")
    parser.add_argument("--skip-smoke", action="store_true", help="only the step comparison")
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
    return 0


if __name__ == "__main__":
    reexec_with_fast_blas([os.path.abspath(__file__), *sys.argv[1:]])
    print(blas_note() or "[blas] (not Linux: MLX's own BLAS)")
    sys.exit(main())
