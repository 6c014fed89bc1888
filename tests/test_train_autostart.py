"""``python -m mlx_train.train --tensorboard_dir`` on its own brings TensorBoard up (library autostart)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from conftest import get_json, pids_mentioning, tensorboard_pids, wait_for

from tb_lazy.process import pid_alive

URL_LINE = re.compile(r"^\[tensorboard\] (http://127\.0\.0\.1:\d+) \(pid=(\d+)\)$", re.M)


@pytest.fixture(scope="module")
def pretrain_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    subprocess.run([sys.executable, "-m", "mlx_train.data", "--out_dir", str(out), "--scale", "0.1"],
                   check=True, capture_output=True)
    return out / "pretrain.jsonl"


def train(tb_env, data, *, env=None):
    args = [
        sys.executable, "-m", "mlx_train.train", "--task", "pretrain", "--data_path", str(data),
        "--out_dir", str(tb_env.root / "out"), "--tensorboard_dir", str(tb_env.root / "tf_dir" / "pretrain"),
        "--preset", "tiny", "--seq_len", "64", "--batch_size", "4", "--max_steps", "6", "--log_interval", "2",
        "--eval_interval", "6", "--save_interval", "6",
    ]
    return subprocess.run(args, env={**tb_env.env, **(env or {})}, capture_output=True, text=True, timeout=300)


def test_training_alone_starts_tensorboard_and_leaves_only_it(tb_env, pretrain_data):
    result = train(tb_env, pretrain_data)
    assert result.returncode == 0, result.stderr[-2000:]
    (url, pid), = URL_LINE.findall(result.stdout)
    assert url == f"http://127.0.0.1:{tb_env.port}"
    # TensorBoard serves --tensorboard_dir: the run's own folder in it is a run of its own
    assert wait_for(lambda: any("train/loss" in tags for tags in get_json(f"{url}/data/plugin/scalars/tags").values()),
                    timeout=30)
    assert tensorboard_pids(tb_env.root) == [int(pid)], "TB_KEEP=1: TensorBoard stays"
    assert [p for p in pids_mentioning(str(tb_env.root)) if b"tb_lazy" in open(f"/proc/{p}/cmdline", "rb").read()] \
        == [], "no watcher outlives the training"


def test_training_alone_with_keep_off_takes_tensorboard_down_with_it(tb_env, pretrain_data):
    result = train(tb_env, pretrain_data, env={"TB_KEEP": "0"})
    assert result.returncode == 0, result.stderr[-2000:]
    (_, pid), = URL_LINE.findall(result.stdout)
    assert wait_for(lambda: not pid_alive(int(pid)), timeout=15)
    assert tensorboard_pids(tb_env.root) == []
