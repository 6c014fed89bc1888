"""Benchmark: one SFT epoch of mlx_train with sequence packing against the same epoch without,
on the bundled SFT data (same model, conversations, batch size and row length), runs
interleaved, each mode repeated. (``--task dpo``: length-grouped batches against shuffled ones.)

    python benchmarks/bench_packing.py [--task sft] [--preset tiny|small] [--reps 3] [--samples 400]
                                       [--batch_size 8] [--seq_len 256] [--epochs 1]

Each run is a real ``python -m mlx_train.train --task sft --epochs 1`` logging every step; its
own TensorBoard scalars give the training time (the sum of the logged step times: start-up,
evaluation and checkpoints excluded, compilation of new batch shapes included), the real
(non-padding) tokens and the trained (loss-bearing) tokens, and the held-out loss after the
epoch. Rep k of every mode uses seed k (initial weights and data order), so the spread of the
held-out loss shows its noise. Printed per mode: min / median / max of real tokens/s, trained tokens/s, wall time to N
real tokens (N: what the shortest epoch reached), epoch time and held-out loss, and each packed
mode's ratio of medians to unpacked. ``--batch_size`` counts conversations in both modes: the
same batches and optimizer steps, so the held-out losses should agree within float rounding.

Not a test: it prints numbers. The tokenizer is trained once (the first run) and reused."""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def epoch_run(*, task: str, data: Path, out_dir: Path, name: str, preset: str, batch_size: int, seq_len: int,
              packing: bool, epochs: int, seed: int, timeout: float) -> dict[str, float]:
    """Training epochs as their own process; its figures, read back from its TensorBoard log."""
    tb = out_dir.parent / "tb"
    argv = [sys.executable, "-m", "mlx_train.train", "--task", task, "--data_path", str(data),
            "--out_dir", str(out_dir), "--tensorboard_dir", str(tb), "--run_name", name,
            "--preset", preset, "--batch_size", str(batch_size), "--seq_len", str(seq_len),
            "--epochs", str(epochs), "--seed", str(seed), "--log_interval", "1",
            "--eval_interval", "1000000", "--eval_batches", "100",
            "--save_interval", "1000000", "--keep_last", "1", "--sample_tokens", "0",
            "--packing" if packing else "--no_packing"]
    tic = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "TB_AUTO": "0"})
    wall = time.perf_counter() - tic
    if proc.returncode != 0:
        sys.exit(f"bench_packing: {name} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    s = _scalars(tb / name)
    steps = sorted(s["train/step_time"])
    times = [s["train/step_time"][k] for k in steps]                 # log_interval 1: one step each
    trained = [s["train/trained_tokens_per_sec"][k] * s["train/step_time"][k] for k in steps]
    last = [s["train/step_time"][k] for k in steps if s["train/epoch"][k] > epochs - 1 + 1e-6]
    return {"steps": len(steps), "time": sum(times), "process": wall, "last_epoch": sum(last),
            "real": s["train/tokens_seen"][steps[-1]], "trained": sum(trained),
            "eval_loss": s["eval/loss"][max(s["eval/loss"])],
            "curve": [(sum(times[:i + 1]), s["train/tokens_seen"][k]) for i, k in enumerate(steps)]}


def _scalars(tbdir: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tbdir))
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def time_to(curve: list[tuple[float, float]], tokens: float) -> float:
    """Training seconds until ``tokens`` real tokens were trained on (interpolated in a step)."""
    before_t, before_n = 0.0, 0.0
    for t, n in curve:
        if n >= tokens:
            return before_t + (t - before_t) * (tokens - before_n) / max(n - before_n, 1e-9)
        before_t, before_n = t, n
    return float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="sft", choices=("sft", "r1", "dpo"),
                        help="stage and bundled data (default sft; dpo: --packing groups pairs by length)")
    parser.add_argument("--preset", default="tiny", choices=("tiny", "small"),
                        help="model size (default tiny: a rep in about a minute; small: the issue's)")
    parser.add_argument("--reps", type=int, default=3, help="runs of each mode, interleaved (default 3)")
    parser.add_argument("--samples", type=int, default=400,
                        help="the first N lines of the task's bundled data (default 400)")
    parser.add_argument("--batch_size", type=int, default=8, help="conversations (DPO: pairs) per batch (default 8)")
    parser.add_argument("--seq_len", type=int, default=256, help="tokens per row (default 256)")
    parser.add_argument("--epochs", type=int, default=1,
                        help="epochs per run (default 1; 2 also times the second epoch alone, "
                             "every batch shape already compiled)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per run (default 1800)")
    args = parser.parse_args(argv)

    from mlx_train.datagen import write_all

    modes = {"unpacked": False, "packed": True}
    if args.task == "dpo":
        modes = {"ungrouped": False, "grouped": True}
    with tempfile.TemporaryDirectory(prefix="bench_packing_") as tmp:
        root = Path(tmp)
        lines = write_all(root / "data", seed=0)[args.task].read_text(encoding="utf-8").splitlines()
        data = root / f"{args.task}.jsonl"
        data.write_text("\n".join(lines[:args.samples]) + "\n", encoding="utf-8")
        print(f"{args.task}, preset {args.preset}, {min(args.samples, len(lines))} samples, seq_len "
              f"{args.seq_len}, batch {args.batch_size}, {args.reps} reps interleaved, {os.cpu_count()} CPUs",
              flush=True)
        results: dict[str, list[dict]] = {m: [] for m in modes}
        for rep in range(args.reps):
            for mode, packing in (modes.items() if rep % 2 == 0 else reversed(modes.items())):
                r = epoch_run(task=args.task, data=data, out_dir=root / "out", name=f"{mode}-{rep}",
                              preset=args.preset, batch_size=args.batch_size, seq_len=args.seq_len,
                              packing=packing, epochs=args.epochs, seed=rep, timeout=args.timeout)
                results[mode].append(r)
                print(f"  rep {rep + 1} {mode:10s}: {r['steps']} steps, {r['time']:.1f} s training "
                      f"({r['process']:.1f} s process), {r['real']:.0f} real / {r['trained']:.0f} trained "
                      f"tokens, eval loss {r['eval_loss']:.4f}", flush=True)
    n = min(r["real"] for rs in results.values() for r in rs)
    figures = {
        "real tok/s": lambda r: r["real"] / r["time"],
        "trained tok/s": lambda r: r["trained"] / r["time"],
        f"s to {n:.0f} real tok": lambda r: time_to(r["curve"], n),
        f"s for {args.epochs} epoch(s)": lambda r: r["time"],
        **({"s for the last epoch": lambda r: r["last_epoch"]} if args.epochs > 1 else {}),
        "eval loss at the end": lambda r: r["eval_loss"],
    }
    print(f"\nmin / median / max of {args.reps} runs; ratio: median / {next(iter(modes))}'s median")
    for label, of in figures.items():
        print(label)
        base = None
        for mode in modes:
            values = sorted(of(r) for r in results[mode])
            median = statistics.median(values)
            base = median if base is None else base
            print(f"  {mode:12s}{values[0]:>10.4g}{median:>10.4g}{values[-1]:>10.4g}   x{median / base:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
