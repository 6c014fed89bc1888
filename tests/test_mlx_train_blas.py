"""The OpenBLAS re-exec gives the same losses as mlx's reference BLAS."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from mlx_train.blas import find_openblas
from mlx_train.datagen import write_all

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or find_openblas({}) is None,
    reason="no system OpenBLAS to preload (apt-get install libopenblas0-pthread)")


def _train(tmp_path, data, blas: str) -> tuple[str, list[float]]:
    env = dict(os.environ, TB_AUTO="0", MLX_TRAIN_BLAS=blas)
    env.pop("LD_PRELOAD", None)
    proc = subprocess.run(
        [sys.executable, "-m", "mlx_train.train", "--task", "pretrain", "--data_path",
         str(data), "--out_dir", str(tmp_path / blas), "--hidden_size", "64", "--num_heads", "4",
         "--intermediate_size", "128", "--seq_len", "64", "--vocab_size", "512",
         "--max_steps", "4", "--log_interval", "1", "--eval_batches", "1", "--sample_tokens", "0"],
        capture_output=True, text=True, env=env, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "", "stdout is for what a caller pipes; [blas] and progress go to stderr"
    losses = [float(x) for x in re.findall(r"\| loss ([0-9.]+) \| lr", proc.stderr)]
    [blas_line] = [line for line in proc.stderr.splitlines() if line.startswith("[blas]")]   # said once
    return blas_line, losses


def test_openblas_losses_match_reference_blas(tmp_path):
    data = write_all(tmp_path / "data", seed=0, scale=0.05)["pretrain"]
    ref_line, ref = _train(tmp_path, data, "reference")
    fast_line, fast = _train(tmp_path, data, "auto")
    assert ref_line.startswith("[blas] mlx's reference BLAS")
    assert fast_line.startswith("[blas] OpenBLAS")
    assert len(ref) == len(fast) == 4
    assert fast == pytest.approx(ref, rel=1e-3, abs=1e-3)
