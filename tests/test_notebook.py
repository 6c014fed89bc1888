"""``%load_ext tb_lazy`` / ``%tb_lazy DIR`` in a real notebook, run by a real kernel (nbclient + ipykernel).

The kernel is this interpreter (a kernel spec written under tmp_path), started with this
test's environment: tb_lazy's state and the temp folder under tmp_path (``tb_env``), so its
watchers and TensorBoards are the test's own, and the leak checks see them.
"""

from __future__ import annotations

import copy
import json
import re
import sys

import nbclient  # [dev] installs these and ipykernel ([notebook]): a missing one is an error, not a skip
import nbformat
import pytest
from conftest import get_json, pids_mentioning, tensorboard_pids, wait_for

from tb_lazy.process import stop_process

PORT = re.compile(r"const port = (\d+);")
# Training in the kernel itself, in a thread (as a notebook user starts a long run), or in
# another process; both write tensorboardX scalars under logs/run1 and close the writer.
WRITE_IN_A_THREAD = """
import threading
from tensorboardX import SummaryWriter

def train():
    with SummaryWriter("logs/run1") as writer:
        for step in range(3):
            writer.add_scalar("train/loss", 1.0 / (step + 1), step)

trainer = threading.Thread(target=train)
trainer.start()
trainer.join()
"""
WRITE_IN_ANOTHER_PROCESS = """
import subprocess, sys
script = '''
from tensorboardX import SummaryWriter
with SummaryWriter("logs/run1") as writer:
    for step in range(3):
        writer.add_scalar("train/loss", 1.0 / (step + 1), step)
'''
subprocess.run([sys.executable, "-c", script], check=True)
"""


def _kernel(tmp_path, monkeypatch) -> str:
    """A kernel spec that runs this interpreter; its name."""
    spec = tmp_path / "jupyter" / "kernels" / "tb-lazy-test"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "language": "python", "display_name": "tb_lazy test"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "jupyter" / "runtime"))  # the kernel names tmp_path
    return "tb-lazy-test"


def _run(cells: list[str], tmp_path, kernel: str, **options) -> tuple[list, dict[int, list]]:
    """Run ``cells`` in a fresh kernel in tmp_path; every cell's final outputs, and each cell's
    outputs as they were the moment it finished."""
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    when_done: dict[int, list] = {}

    def snapshot(cell, cell_index, **_):
        when_done[cell_index] = copy.deepcopy(cell.outputs)

    client = nbclient.NotebookClient(
        notebook, timeout=300, kernel_name=kernel, resources={"metadata": {"path": str(tmp_path)}},
        on_cell_executed=snapshot, **options,
    )
    client.execute()
    return [cell.outputs for cell in notebook.cells], when_done


def _html(outputs: list) -> str:
    return "".join(out.get("data", {}).get("text/html", "") for out in outputs if out["output_type"] == "display_data")


def _text(outputs: list) -> str:
    return "".join(out.get("text", "") or out.get("data", {}).get("text/plain", "") for out in outputs)


@pytest.mark.parametrize("training", [WRITE_IN_A_THREAD, WRITE_IN_ANOTHER_PROCESS], ids=["thread", "process"])
def test_tb_lazy_waits_then_shows_the_tensorboard_serving_this_kernels_scalars(tb_env, tmp_path, monkeypatch, training):
    kernel = _kernel(tmp_path, monkeypatch)
    served = []
    try:
        outputs, when_done = _run(
            [
                "%load_ext tb_lazy\n%tb_lazy logs",
                training,
                "%tb_lazy wait logs 120",  # the notebook is run headless: wait for the frame before moving on
                "%tb_lazy logs",
                "%tb_lazy wait logs 120\n%tb_lazy list",
            ],
            tmp_path,
            kernel,
        )
        # The first cell finished at once, before any data existed: it said it was waiting.
        assert "waiting for data under logs" in _text(when_done[0]), when_done[0]
        assert "<iframe" not in _html(when_done[0])
        # Once the data landed, its output became TensorBoard's frame, for a TensorBoard serving the scalars.
        assert "<iframe" in _html(outputs[0]) and "tensorboard-frame" in _html(outputs[0]), outputs[0]
        port = int(PORT.search(_html(outputs[0])).group(1))
        served = tensorboard_pids(tmp_path)
        tags = wait_for(lambda: get_json(f"http://127.0.0.1:{port}/data/plugin/scalars/tags").get("run1"), 60)
        assert tags and "train/loss" in tags, tags
        assert f"http://127.0.0.1:{port}" in _text(outputs[2])
        # Asked again: the same TensorBoard, shown at once; one TensorBoard process in all.
        assert int(PORT.search(_html(outputs[3])).group(1)) == port
        assert len(served) == 1 and str(served[0]) in _text(outputs[4]), (served, outputs[4])
        # The kernel is gone, and the watchers ended (they had served): only TensorBoard (TB_KEEP=1) is left.
        watchers_or_kernel = (f"tb_lazy watch {tmp_path}", str(tmp_path / "jupyter"))
        assert wait_for(lambda: not any(map(pids_mentioning, watchers_or_kernel)), 30), pids_mentioning(str(tmp_path))
    finally:
        for pid in served:
            stop_process(pid, grace=10)


def test_stop_and_list_and_bad_usage(tb_env, tmp_path, monkeypatch):
    kernel = _kernel(tmp_path, monkeypatch)
    outputs, _ = _run(
        [
            "%load_ext tb_lazy\n%tb_lazy logs",
            "from tensorboardX import SummaryWriter\n"
            "with SummaryWriter('logs/run1') as writer:\n    writer.add_scalar('train/loss', 1.0, 0)",
            "%tb_lazy wait logs 120  # a trailing comment is a comment",
            "%tb_lazy stop logs",
            "%tb_lazy list",
            "%tb_lazy logs --nope",
            "%tb_lazy wait",
        ],
        tmp_path,
        kernel,
        allow_errors=True,
    )
    url = _text(outputs[2]).strip()
    assert url.startswith("http://127.0.0.1:"), outputs[2]
    assert "stopped TensorBoard pid=" in _text(outputs[3]) and url in _text(outputs[3]), outputs[3]
    assert "no TensorBoard is running" in _text(outputs[4]), outputs[4]
    assert tensorboard_pids(tmp_path) == []
    # bad usage: one line, IPython's own UsageError (no traceback)
    said = _text(outputs[5])
    assert "UsageError: unknown option '--nope'" in said and "Traceback" not in said, outputs[5]
    said = _text(outputs[6])
    assert "UsageError: usage: %tb_lazy DIR" in said and "Traceback" not in said, outputs[6]
