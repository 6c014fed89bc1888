"""Benchmark: one SFT epoch of mlx_train, packed and unpacked, against the real ``mlx_lm.lora
--fine-tune-type full`` on the same model, data, batch, sequence length and optimizer; MFU of the
pretrain stage against a NumPy sgemm measured in the same run, with a profile of one step and of one
layer operation by operation; one process against two ranks
under ``mlx.launch`` (ring backend, loopback) on the same cores; and the wall time of a smoke run.

    python benchmarks/bench_mlx_train.py [--quick] [--reps 5] [--skip-smoke] [--skip-ranks] [--skip-mfu]
                                         [--skip-unpreloaded]

Not a test: it prints numbers. Each comparison runs its two sides interleaved (A B, B A, A B, …)
so the machine's noise hits both alike, at least 5 times, and prints min / median / max and the
ratio of the medians. OpenBLAS is preloaded for both sides (mlx_train does it by itself; for
mlx-lm the benchmark sets LD_PRELOAD, as a user who read its docs would)."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlx_train.blas import blas_note, find_openblas, reexec_with_fast_blas
from mlx_train.launch import ring_port


def spread(xs: list[float], fmt: str = "{:.2f}") -> str:
    """``min / median / max`` of ``xs``."""
    return " / ".join(fmt.format(x) for x in (min(xs), statistics.median(xs), max(xs)))


def run(cmd: list[str], *, env: dict[str, str], what: str) -> tuple[float, str]:
    """Run ``cmd``; return (wall seconds, stderr). Exits with the command's output if it fails."""
    tic = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - tic
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-2000:]}\n"
                         f"{proc.stderr[-2000:]}")
    return wall, proc.stderr


def interleaved(reps: int, sides: dict[str, object]) -> dict[str, list]:
    """Run each side's callable ``reps`` times, alternating which goes first."""
    names = list(sides)
    out: dict[str, list] = {name: [] for name in names}
    for rep in range(reps):
        for name in names if rep % 2 == 0 else names[::-1]:
            out[name].append(sides[name](rep))
        print(f"  .. rep {rep + 1}: " + ", ".join(f"{name} {out[name][-1]:.2f}" for name in names), file=sys.stderr)
    return out


# ---------------------------------------------------------------- SFT: ours vs mlx_lm.lora


def prepare_sft(tmp: Path, *, preset: str, samples: int, env: dict[str, str]) -> tuple[Path, Path, Path]:
    """Bundled data (its first ``samples`` SFT conversations), a base model (one pretrain step of
    ``preset``: an mlx-lm model folder) and the SFT data exported for mlx-lm (the same training
    split). Returns (base model, sft.jsonl, mlx-lm data folder)."""
    py = sys.executable
    run([py, "-m", "mlx_train.data", "--out_dir", str(tmp / "data")], env=env, what="data")
    sft = tmp / "sft.jsonl"
    lines = (tmp / "data" / "sft.jsonl").read_text(encoding="utf-8").splitlines()[:samples]
    sft.write_text("\n".join(lines) + "\n", encoding="utf-8")
    run([py, "-m", "mlx_train.train", "--task", "pretrain", "--preset", preset, "--data_path",
         str(tmp / "data" / "pretrain.jsonl"), "--out_dir", str(tmp / "base"), "--max_steps", "1",
         "--eval_batches", "1", "--sample_tokens", "0", "--run_name", "base"], env=env, what="base model")
    run([py, "-m", "mlx_train.data", "export", "--task", "sft", "--data_path", str(sft),
         "--out_dir", str(tmp / "lora_data")], env=env, what="export")
    return tmp / "base", sft, tmp / "lora_data"


def token_counts(model: Path, data: Path, seq_len: int) -> list[tuple[int, int, int]]:
    """Per training conversation (chat template applied, cut at ``seq_len``): its real tokens
    (the same for both trainers), the tokens mlx_train trains on (every assistant reply) and
    those ``mlx_lm.lora --mask-prompt`` trains on (the last reply)."""
    from mlx_lm.utils import load_tokenizer

    tokenizer = load_tokenizer(str(model))

    def length(messages: list, prompt: bool = False) -> int:
        return len(tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=prompt))

    counts = []
    with open(data / "train.jsonl", encoding="utf-8") as handle:
        for line in handle:
            messages = json.loads(line)["messages"]
            n = length(messages)
            replies = [min(length(messages[:i + 1]), seq_len) - min(length(messages[:i], True), seq_len)
                       for i, m in enumerate(messages) if m["role"] == "assistant"]
            counts.append((min(n, seq_len), sum(replies), replies[-1] if replies else 0))
    return counts


def bench_sft(tmp: Path, *, preset: str, batch: int, seq_len: int, samples: int, reps: int,
              unpreloaded: bool = True) -> None:
    """One epoch of SFT: mlx_train packed and unpacked against ``mlx_lm.lora --fine-tune-type
    full`` (OpenBLAS preloaded for it too). An epoch's time is the wall time of a run of
    ``WARM + epoch`` steps less that of a run of ``WARM`` steps: start-up, loading, the first
    compilations and the final save cancel out. With ``unpreloaded``, also a step of mlx_lm.lora
    as users run it, without OpenBLAS."""
    env = dict(os.environ, TB_AUTO="0", HF_HUB_CACHE=str(tmp / "hub"))
    (tmp / "hub").mkdir(parents=True)
    base, sft, lora_data = prepare_sft(tmp, preset=preset, samples=samples, env=env)
    lib = find_openblas()
    theirs_env = dict(env, LD_PRELOAD=" ".join(filter(None, [lib, env.get("LD_PRELOAD")]))) if lib else env
    lr, wd = "5e-4", "0.01"  # AdamW on both sides; no gradient clipping (mlx-lm's trainer has none)
    counts = token_counts(base, lora_data, seq_len)
    epoch = len(counts) // batch
    warm = 5

    def ours(packing: bool):
        def one(steps: int, out: Path) -> float:
            return run([sys.executable, "-m", "mlx_train.train", "--task", "sft", "--preset", preset,
                        "--init_from", str(base), "--data_path", str(sft), "--out_dir", str(out),
                        "--max_steps", str(steps), "--batch_size", str(batch), "--seq_len", str(seq_len),
                        "--learning_rate", lr, "--weight_decay", wd, "--grad_clip", "0", "--warmup_steps", "0",
                        "--log_interval", str(steps), "--eval_interval", str(10 * steps), "--eval_batches", "1",
                        "--sample_tokens", "0", "--packing" if packing else "--no_packing"],
                       env=env, what="mlx_train SFT")[0]
        return lambda rep: one(warm + epoch, tmp / f"ours{packing}{rep}") - one(warm, tmp / f"ours{packing}{rep}w")

    def lora(steps: int, out: Path, lora_env: dict[str, str]) -> float:
        return run([sys.executable, "-m", "mlx_lm", "lora", "--model", str(base), "--train", "--data",
                    str(lora_data), "--fine-tune-type", "full", "--num-layers", "-1", "--mask-prompt",
                    "--optimizer", "adamw", "--iters", str(steps), "--batch-size", str(batch),
                    "--max-seq-length", str(seq_len), "--learning-rate", lr, "--steps-per-report", str(steps),
                    "--steps-per-eval", str(10 * steps), "--val-batches", "1", "--save-every", str(10 * steps),
                    "--adapter-path", str(out)], env=lora_env, what="mlx_lm.lora")[0]

    def theirs(rep: int) -> float:
        return lora(warm + epoch, tmp / f"theirs{rep}", theirs_env) - lora(warm, tmp / f"theirs{rep}w", theirs_env)

    tokens, ours_trained, theirs_trained = (sum(c[k] for c in counts) * epoch * batch / len(counts) for k in range(3))
    print(f"SFT, {preset} preset, one epoch = {epoch} steps of {batch} conversations (the first {samples} "
          f"bundled, {len(counts)} for training), seq_len {seq_len}, AdamW lr {lr}; an epoch: {tokens:,.0f} real "
          f"tokens, {ours_trained:,.0f} trained by mlx_train (every reply), {theirs_trained:,.0f} by mlx-lm "
          f"(--mask-prompt: the last reply); OpenBLAS: {lib or 'none'}; epoch time = run of {warm}+{epoch} steps "
          f"- run of {warm}")
    walls = interleaved(reps, {"mlx_train packed": ours(True), "mlx_train unpacked": ours(False),
                               "mlx_lm.lora": theirs})
    for name, xs in walls.items():
        trained = theirs_trained if name == "mlx_lm.lora" else ours_trained
        print(f"  {name:<18} epoch s (min / median / max): {spread(xs)}   real tokens/s: "
              f"{spread([tokens / x for x in xs], '{:,.0f}')}   trained tokens/s: "
              f"{spread([trained / x for x in xs], '{:,.0f}')}")
    for name in ("mlx_train packed", "mlx_train unpacked"):
        ratio = statistics.median(walls["mlx_lm.lora"]) / statistics.median(walls[name])
        print(f"  speed-up of {name} over mlx_lm.lora (epoch time, medians of {reps}; > 1: ours is faster): "
              f"x{ratio:.2f}")
    print("  (mlx-lm's full fine-tune trains the transformer layers, not the tied embedding)")
    if lib and unpreloaded:
        # as a user runs it: mlx's reference BLAS. Far slower, so 2 steps once, not an epoch
        plain = {k: v for k, v in env.items() if k != "LD_PRELOAD"}
        step = (lora(3, tmp / "plain3", plain) - lora(1, tmp / "plain1", plain)) / 2
        with_blas = statistics.median(walls["mlx_lm.lora"]) / epoch
        print(f"  mlx_lm.lora without OpenBLAS preloaded (as users run it; run of 3 steps - run of 1, once): "
              f"{step:.2f} s a step, x{step / with_blas:.0f} its time with OpenBLAS ({with_blas:.2f} s)")


# ---------------------------------------------------------------- MFU


def sgemm_gflops(n: int = 2048, reps: int = 5) -> float:
    """Best GFLOP/s of a float32 n x n matrix product in NumPy (its own BLAS), ``reps`` tries."""
    import numpy as np

    a, b = (np.random.default_rng(k).standard_normal((n, n), dtype=np.float32) for k in (0, 1))
    a @ b                                                               # warm the BLAS threads
    best = min(_timed(lambda: a @ b) for _ in range(reps))
    return 2 * n ** 3 / best / 1e9


def _timed(fn) -> float:
    tic = time.perf_counter()
    fn()
    return time.perf_counter() - tic


def model_flops_per_token(config: dict, seq_len: int) -> float:
    """Training FLOPs per token: 6 x the matmul parameters (embedding lookup excluded, the tied
    output head included) plus attention's scores and mixing (6 x 2 x layers x seq_len x hidden
    for causal attention: half of the full 12 x ...)."""
    d, layers, inter = config["hidden_size"], config["num_hidden_layers"], config["intermediate_size"]
    heads, kv = config["num_attention_heads"], config["num_key_value_heads"]
    head_dim = d // heads
    per_layer = d * d * 2 + d * kv * head_dim * 2 + 3 * d * inter        # q, o; k, v; gate, up, down
    matmul = layers * per_layer + d * config["vocab_size"]               # + the output head
    return 6 * matmul + 6 * layers * seq_len * d


def profile_step(*, preset: str, shapes: list[tuple[int, int]], reps: int) -> None:
    """Where a training step's time goes, in this process: for batches of ``shapes`` (rows,
    positions) of random tokens, the median time of a whole compiled step (forward, backward,
    gradient norm, AdamW update) and of forward and backward alone; and, on gradients of real
    values, the AdamW update as mlx_train runs it (two halves on two CPU streams) and as one
    compiled ``optimizer.update``, and the global gradient norm. Beside them, the time the
    step's matmul FLOPs would take at the sgemm rate measured here."""
    from functools import partial

    import mlx.core as mx
    import mlx.optimizers as optim
    import numpy as np
    from mlx.utils import tree_map

    from mlx_train.config import PRESETS
    from mlx_train.model import build_model, count_params, model_config
    from mlx_train.stages import lm_loss
    from mlx_train.step import global_norm, make_step, split_update

    dims = dict(PRESETS[preset])
    vocab = dims.pop("vocab_size")
    model = build_model(model_config(dims, vocab_size=vocab, max_len=256, eos_token_ids=[0]))
    optimizer = optim.AdamW(learning_rate=1e-5)
    step = make_step(model, optimizer, lm_loss, accum_steps=1, grad_clip=1.0)
    grads_only = make_step(model, optimizer, lm_loss, accum_steps=2, grad_clip=0.0)   # update=False: no update
    config = {"hidden_size": dims["hidden_size"], "num_hidden_layers": dims["num_layers"],
              "intermediate_size": dims["intermediate_size"], "num_attention_heads": dims["num_heads"],
              "num_key_value_heads": dims["num_kv_heads"], "vocab_size": vocab}
    peak = sgemm_gflops()

    def timed(fn) -> float:
        tic = time.perf_counter()
        mx.eval(fn())
        return time.perf_counter() - tic

    def medians(*fns) -> list[float]:
        """Median time of each of ``fns``, run in turn ``reps`` times (after two warm-up rounds
        that compile), so the machine's noise hits them alike."""
        times = [[timed(fn) for fn in fns] for _ in range(reps + 2)][2:]
        return [statistics.median(t[k] for t in times) for k in range(len(fns))]

    # real values: a broadcast constant (mx.full) would be read for free and flatter the update
    grads = tree_map(lambda p: mx.random.normal(p.shape, p.dtype) * 1e-3, model.trainable_parameters())
    mx.eval(grads)
    state = [model.state, optimizer.state]
    split = split_update(model, optimizer)

    @partial(mx.compile, inputs=state, outputs=state)
    def one_update(g):
        optimizer.update(model, g)

    grad_norm = mx.compile(global_norm)

    two, one, norm = medians(lambda: (split(grads, mx.array(1.0)), model.state, optimizer.state)[1:],
                             lambda: (one_update(grads), model.state, optimizer.state)[1:],
                             lambda: grad_norm(grads))
    print(f"one training step, {preset} preset ({count_params(model) / 1e6:.1f}M parameters), NumPy sgemm "
          f"{peak:.0f} GFLOP/s here; medians of {reps}")
    print(f"  AdamW update: {two:.3f} s as mlx_train runs it (two halves, two CPU streams), {one:.3f} s as one "
          f"compiled optimizer.update; global gradient norm {norm:.3f} s")
    for rows, positions in shapes:
        rng = np.random.default_rng(0)
        batch = {"tokens": mx.array(rng.integers(0, vocab, (rows, positions + 1), dtype=np.int32)),
                 "weights": mx.ones((rows, positions))}
        whole, grad = medians(lambda b=batch: (step(b, None, True), model.state, optimizer.state),
                              lambda b=batch: grads_only(b, None, False))
        flops = model_flops_per_token(config, positions) * rows * positions
        print(f"  {rows} x {positions} positions: whole step {whole:.3f} s = forward+backward {grad:.3f} s "
              f"+ the rest {whole - grad:.3f} s; its model FLOPs at the sgemm rate: {flops / peak / 1e9:.3f} s "
              f"(MFU of forward+backward {flops / grad / 1e9 / peak:.2f}, of the whole step "
              f"{flops / whole / 1e9 / peak:.2f})")


def profile_layer(*, preset: str, rows: int, positions: int, reps: int) -> None:
    """Where one decoder layer's forward+backward goes, operation by operation, on a packed batch
    (``rows`` x ``positions``, conversations of 40 tokens under the block-diagonal mask): each
    matmul group against the elementwise work around it, and the cost per element of MLX's CPU
    ``exp`` (behind SiLU and softmax) beside an add's. mlx_train's training forward pass
    (`mlx_train.forward`) uses its own SwiGLU; the rest is mlx-lm's."""
    import mlx.core as mx
    import numpy as np
    from mlx_lm.models.activations import swiglu

    from mlx_train.config import PRESETS
    from mlx_train.forward import swiglu as fast_swiglu
    from mlx_train.packing import segment_mask

    dims = PRESETS[preset]
    D, F, H = dims["hidden_size"], dims["intermediate_size"], dims["num_heads"]
    hd = D // H
    mx.random.seed(0)

    def median_ms(fn, *args) -> float:
        for _ in range(3):
            mx.eval(fn(*args))
        times = []
        for _ in range(reps * 4):
            tic = time.perf_counter()
            mx.eval(fn(*args))
            times.append(time.perf_counter() - tic)
        return statistics.median(times) * 1e3

    def fwd_bwd(f, n):
        """Compiled gradient of sum(f(...)) with respect to its first ``n`` arguments."""
        return mx.compile(mx.grad(lambda *a: f(*a).sum(), argnums=tuple(range(n))))

    x = mx.random.normal((rows, positions, D))
    w_in, w_up, w_out = mx.random.normal((D, F)) * 0.02, mx.random.normal((D, F)) * 0.02, \
        mx.random.normal((F, D)) * 0.02
    gate, up = mx.random.normal((rows, positions, F)), mx.random.normal((rows, positions, F))
    w_qkvo = [mx.random.normal((D, D)) * 0.02 for _ in range(4)]   # four: equal ones would be computed once
    q, k, v = (mx.random.normal((rows, H, positions, hd)) for _ in range(3))
    segments = mx.array(np.arange(rows * positions).reshape(rows, positions) // 40 + 1, dtype=mx.int32)
    mask = segment_mask(segments)
    norm_w = mx.ones((D,))
    flat = mx.random.normal((rows * positions * F,))
    mx.eval(x, w_in, w_up, w_out, gate, up, *w_qkvo, q, k, v, mask, norm_w, flat)
    ops = {
        "MLP matmuls (3)": (fwd_bwd(lambda x, a, b, c: ((x @ a) * (x @ b)) @ c, 4), (x, w_in, w_up, w_out)),
        "SwiGLU, mlx-lm's (silu(gate) * up)": (fwd_bwd(swiglu, 2), (gate, up)),
        "SwiGLU, mlx_train's (exp from fast_exp)": (fwd_bwd(fast_swiglu, 2), (gate, up)),
        "attention projections (4)": (fwd_bwd(lambda x, a, b, c, d: ((x @ a) + (x @ b) + (x @ c)) @ d, 5),
                                      (x, *w_qkvo)),
        "attention matmuls alone (QK^T, PV)": (fwd_bwd(lambda q, k, v: (q @ k.swapaxes(-1, -2)) @ v, 3), (q, k, v)),
        "attention core (QK^T, mask, softmax, PV)": (
            fwd_bwd(lambda q, k, v: mx.fast.scaled_dot_product_attention(q, k, v, scale=hd ** -0.5, mask=mask), 3),
            (q, k, v)),
        "RMSNorm x2": (fwd_bwd(lambda x, w: mx.fast.rms_norm(x, w, 1e-5) + mx.fast.rms_norm(x, w, 1e-5), 2),
                       (x, norm_w)),
    }
    n = rows * positions
    flops = {"MLP matmuls (3)": 3 * 2 * n * D * F, "attention projections (4)": 4 * 2 * n * D * D,
             "attention matmuls alone (QK^T, PV)": 2 * 2 * rows * H * positions * positions * hd}
    peak = sgemm_gflops()
    print(f"one decoder layer of the {preset} preset, forward+backward, {rows} x {positions} packed positions "
          f"(medians of {reps * 4}; NumPy sgemm {peak:.0f} GFLOP/s):")
    for name, (fn, args) in ops.items():
        t = median_ms(fn, *args)
        rate = f"   {3 * flops[name] / t / 1e6:.0f} GFLOP/s, {3 * flops[name] / t / 1e6 / peak:.2f} of sgemm" \
            if name in flops else ""        # backward: twice the forward's matmul FLOPs
        print(f"  {name:<42} {t:7.2f} ms{rate}")
    exp_ms, add_ms = median_ms(mx.exp, flat), median_ms(lambda a: a + 1.0, flat)
    print(f"  MLX CPU exp: {exp_ms * 1e6 / flat.size:.1f} ns a float, an add {add_ms * 1e6 / flat.size:.1f} ns "
          f"(one thread each; a SwiGLU forward takes one exp per element, a softmax one per score)")


def bench_mfu(tmp: Path, *, preset: str, steps: int, reps: int) -> None:
    """Model FLOP/s of the pretrain stage (rows of seq_len tokens, no padding) over NumPy's sgemm
    GFLOP/s measured right before each run: a peak this machine reaches now."""
    env = dict(os.environ, TB_AUTO="0")
    run([sys.executable, "-m", "mlx_train.data", "--out_dir", str(tmp / "data")], env=env, what="data")
    seq_len = 256
    ratios, peaks, achieved = [], [], []
    for rep in range(reps):
        peak = sgemm_gflops()
        _, err = run([sys.executable, "-m", "mlx_train.train", "--task", "pretrain", "--preset", preset,
                      "--data_path", str(tmp / "data/pretrain.jsonl"), "--out_dir", str(tmp / f"mfu{rep}"),
                      "--seq_len", str(seq_len), "--batch_size", "8", "--max_steps", str(steps),
                      "--log_interval", "5", "--eval_interval", str(10 * steps), "--eval_batches", "1",
                      "--sample_tokens", "0"], env=env, what="pretrain")
        config = json.loads(next((tmp / f"mfu{rep}").glob("*/step_*/config.json")).read_text())
        gflops = tokens_per_sec(err) * model_flops_per_token(config, seq_len) / 1e9
        peaks.append(peak)
        achieved.append(gflops)
        ratios.append(gflops / peak)
        print(f"  .. rep {rep + 1}: sgemm {peak:.0f} GFLOP/s, model {gflops:.0f} GFLOP/s", file=sys.stderr)
    print(f"MFU, pretrain, {preset} preset, batch 8 x {seq_len} tokens, {steps} steps, {reps} runs")
    print(f"  NumPy sgemm 2048^3 GFLOP/s (min / median / max): {spread(peaks, '{:.0f}')}")
    print(f"  model GFLOP/s (min / median / max):               {spread(achieved, '{:.0f}')}")
    print(f"  MFU = model / sgemm of the same rep (min / median / max): {spread(ratios)}")


# ---------------------------------------------------------------- 1 process vs 2 ranks

RANKS_MODEL = ["--preset", "tiny", "--hidden_size", "256", "--num_layers", "4", "--num_heads", "4",
               "--intermediate_size", "768", "--vocab_size", "2048", "--seq_len", "256",
               "--batch_size", "8", "--warmup_steps", "2", "--log_interval", "5",
               "--eval_interval", "1000", "--save_interval", "1000", "--sample_tokens", "0"]


def tokens_per_sec(stderr: str) -> float:
    """Median global real tokens/s over the progress windows after the first (compile, warm-up)."""
    rates = [float(line.split(" tok/s (real)")[0].rsplit("| ", 1)[1].replace(",", ""))
             for line in stderr.splitlines() if " tok/s" in line]
    return statistics.median(rates[1:] or rates)


def bench_ranks(tmp: Path, *, steps: int, reps: int) -> None:
    cores = os.cpu_count() or 2
    half = max(1, cores // 2)
    env = dict(os.environ, TB_AUTO="0")
    run([sys.executable, "-m", "mlx_train.data", "--out_dir", str(tmp / "data")], env=env, what="data")
    train = [sys.executable, "-m", "mlx_train.train", "--task", "pretrain", *RANKS_MODEL,
             "--data_path", str(tmp / "data/pretrain.jsonl"), "--max_steps", str(steps)]

    def one(rep: int) -> float:
        threads = dict(env, OPENBLAS_NUM_THREADS=str(cores), OMP_NUM_THREADS=str(cores))
        return tokens_per_sec(run(train + ["--out_dir", str(tmp / f"one{rep}")], env=threads, what="1 process")[1])

    def two(rep: int) -> float:
        threads = dict(env, OPENBLAS_NUM_THREADS=str(half), OMP_NUM_THREADS=str(half))
        launch = [sys.executable, "-m", "mlx_train.launch", "-n", "2", "--backend", "ring", "-p", str(ring_port())]
        return tokens_per_sec(run(launch + train + ["--out_dir", str(tmp / f"two{rep}")], env=threads,
                                  what="2 ranks")[1])

    print(f"data parallel: pretrain {steps} steps, hidden 256, 4 layers, seq 256, global batch 8; "
          f"{cores} cores for both")
    rates = interleaved(reps, {"1 process": one, "2 ranks": two})
    print(f"  1 process, {cores} BLAS threads   tokens/s (min / median / max): {spread(rates['1 process'], '{:,.0f}')}")
    print(f"  2 ranks, {half} BLAS thread(s) each tokens/s (min / median / max): {spread(rates['2 ranks'], '{:,.0f}')}")
    print(f"  scaling efficiency, 2 ranks / 1 process (medians; 1.00 = no cost): "
          f"{statistics.median(rates['2 ranks']) / statistics.median(rates['1 process']):.2f}")


# ---------------------------------------------------------------- smoke run


def smoke(tmp: Path) -> float:
    """Wall seconds of: bundled data, tiny pretrain (100 steps), tiny SFT (60 steps)."""
    env = dict(os.environ, TB_AUTO="0")
    train = [sys.executable, "-m", "mlx_train.train", "--preset", "tiny", "--seq_len", "128",
             "--log_interval", "50", "--eval_interval", "100", "--eval_batches", "2"]
    tic = time.perf_counter()
    run([sys.executable, "-m", "mlx_train.data", "--out_dir", str(tmp / "data")], env=env, what="data")
    run(train + ["--task", "pretrain", "--data_path", str(tmp / "data/pretrain.jsonl"),
                 "--out_dir", str(tmp / "pretrain"), "--max_steps", "100",
                 "--tensorboard_dir", str(tmp / "tb/pretrain")], env=env, what="smoke pretrain")
    run(train + ["--task", "sft", "--data_path", str(tmp / "data/sft.jsonl"), "--out_dir", str(tmp / "sft"),
                 "--init_from", str(tmp / "pretrain"), "--max_steps", "60", "--tensorboard_dir", str(tmp / "tb/sft")],
        env=env, what="smoke SFT")
    return time.perf_counter() - tic


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="tiny model and few steps (a few minutes): proves the benchmark runs")
    parser.add_argument("--reps", type=int, default=5, help="repetitions of each side (at least 5)")
    parser.add_argument("--skip-smoke", action="store_true", help="no smoke run")
    parser.add_argument("--skip-ranks", action="store_true", help="no 1-process vs 2-rank run")
    parser.add_argument("--skip-mfu", action="store_true", help="no MFU measurement and step profile")
    parser.add_argument("--skip-unpreloaded", action="store_true",
                        help="no mlx_lm.lora step without OpenBLAS (minutes a step on the small preset)")
    args = parser.parse_args()
    if args.reps < 5:
        parser.error("--reps must be at least 5")
    print(f"cpu cores: {os.cpu_count()}; {'quick' if args.quick else 'full'} run")
    with tempfile.TemporaryDirectory() as tmp:
        if args.quick:
            bench_sft(Path(tmp) / "sft", preset="tiny", batch=8, seq_len=128, samples=200, reps=args.reps,
                      unpreloaded=not args.skip_unpreloaded)
        else:
            bench_sft(Path(tmp) / "sft", preset="small", batch=8, seq_len=256, samples=400, reps=args.reps,
                      unpreloaded=not args.skip_unpreloaded)
    if not args.skip_mfu:
        with tempfile.TemporaryDirectory() as tmp:
            bench_mfu(Path(tmp), preset="tiny" if args.quick else "small", steps=10 if args.quick else 25,
                      reps=args.reps)
        profile_step(preset="tiny" if args.quick else "small", shapes=[(1, 320), (8, 96), (8, 256)], reps=args.reps)
        profile_layer(preset="tiny" if args.quick else "small", rows=2, positions=160, reps=args.reps)
    if not args.skip_ranks:
        with tempfile.TemporaryDirectory() as tmp:
            bench_ranks(Path(tmp), steps=10 if args.quick else 25, reps=args.reps)
    if not args.skip_smoke and not args.quick:
        with tempfile.TemporaryDirectory() as tmp:
            print("smoke run: data + tiny pretrain (100 steps) + tiny SFT (60 steps), seq_len 128")
            print(f"  wall time: {smoke(Path(tmp)):.1f} s")
    return 0


if __name__ == "__main__":
    reexec_with_fast_blas([os.path.abspath(__file__), *sys.argv[1:]])
    print(blas_note() or "[blas] (not Linux: MLX's own BLAS)")
    sys.exit(main())
