"""What mlx_train puts into TensorBoard beyond the loss curves: the run's configuration as text
and as HPARAMS (with the final ``eval/loss`` as the metric), epoch, tokens seen, peak memory,
step time and eval runtime. Real tiny MLX runs write the event files; TensorBoard's own reader
reads them back; a real TensorBoard serves them to its hparams HTTP API and to headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import pytest
from conftest import default_columns, post_json, session_groups, wait_for
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import api_pb2
from tensorboard.plugins.hparams import metadata as hparams_metadata

from mlx_train import train
from mlx_train.datagen import write_all
from mlx_train.tblog import TBLogger, flatten

TINY = ["--preset", "tiny", "--hidden_size", "64", "--num_heads", "4", "--intermediate_size",
        "128", "--seq_len", "64", "--batch_size", "8", "--vocab_size", "512", "--warmup_steps", "2",
        "--eval_batches", "1", "--sample_tokens", "0"]
RATES = {"a": 1e-3, "b": 3e-3}          # two runs, side by side in one TensorBoard
NEW_TAGS = {"train/epoch", "train/tokens_seen", "train/peak_memory_gb", "train/step_time",
            "eval/runtime"}


@pytest.fixture(autouse=True)
def no_autostart(monkeypatch):
    monkeypatch.setenv("TB_AUTO", "0")      # the tests start their own TensorBoard


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    return write_all(tmp_path_factory.mktemp("data"), seed=0, scale=0.1)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data) -> Path:
    """Two 4-step pretraining runs (learning rates 1e-3 and 3e-3), runs ``a`` and ``b`` logging
    under ``tb/a`` and ``tb/b`` (``tb/<run>``: one TensorBoard folder holds every run)."""
    root = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as patch:  # module scope comes before the autouse fixture above
        patch.setenv("TB_AUTO", "0")
        for name, lr in RATES.items():
            _train_one(root, data, name, lr)
    return root / "tb"


def _train_one(root: Path, data: dict[str, Path], name: str, lr: float) -> None:
    rc = train.main(["--task", "pretrain", "--data_path", str(data["pretrain"]),
                     "--out_dir", str(root / "out"), "--tensorboard_dir", str(root / "tb"), "--run_name", name,
                     "--learning_rate", str(lr), "--max_steps", "4", "--log_interval", "2",
                     "--eval_interval", "2", *TINY])
    assert rc == 0


def accumulator(logdir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return acc


def scalars(acc: EventAccumulator) -> dict[str, list[tuple[int, float]]]:
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_new_scalars_are_logged_at_log_and_eval_steps(runs):
    values = scalars(accumulator(runs / "a"))
    assert NEW_TAGS <= set(values)
    for tag in ("train/epoch", "train/tokens_seen", "train/peak_memory_gb", "train/step_time"):
        assert [s for s, _ in values[tag]] == [2, 4], tag
    assert [s for s, _ in values["eval/runtime"]] == [2, 4]
    # pretraining rows are seq_len + 1 tokens: 8 rows x 64 positions per step
    assert [v for _, v in values["train/tokens_seen"]] == [2 * 8 * 64, 4 * 8 * 64]
    (_, e2), (_, e4) = values["train/epoch"]
    assert 0 < e2 < e4 < 1 and e4 == pytest.approx(2 * e2)
    assert all(v > 0 for _, v in values["train/peak_memory_gb"] + values["train/step_time"]
               + values["eval/runtime"])
    assert all(v < 1 for _, v in values["train/peak_memory_gb"])     # a tiny model: well under 1 GB


def test_epoch_counts_whole_epochs_at_their_ends(tmp_path, data):
    small = tmp_path / "sft.jsonl"     # 60 lines: 57 training samples, 7 batches of 8 per epoch
    small.write_text("".join(data["sft"].read_text(encoding="utf-8").splitlines(keepends=True)[:60]),
                     encoding="utf-8")
    rc = train.main(["--task", "sft", "--data_path", str(small), "--out_dir", str(tmp_path / "out"),
                     "--tensorboard_dir", str(tmp_path / "tb"), "--run_name", "e", "--epochs", "2",
                     "--log_interval", "7", "--eval_interval", "100", "--save_interval", "100", *TINY])
    assert rc == 0
    epochs = scalars(accumulator(tmp_path / "tb" / "e"))["train/epoch"]
    assert [(s, pytest.approx(v)) for s, v in epochs] == [(7, 1.0), (14, 2.0)]


def test_config_text_and_hparams_describe_the_run(runs):
    acc = accumulator(runs / "b")
    [text] = [t.tensor_proto.string_val[0].decode() for t in acc.Tensors("config/text_summary")]
    assert text.startswith("```json\n") and text.endswith("\n```")
    config = json.loads(text.removeprefix("```json\n").removesuffix("\n```"))
    assert config["task"] == "pretrain" and config["learning_rate"] == RATES["b"]
    assert config["model"]["hidden_size"] == 64 and config["model"]["params"] > 0
    assert "hidden_size" not in config              # the override's resolved value is model.hidden_size

    content = acc.PluginTagToContent(hparams_metadata.PLUGIN_NAME)
    start = hparams_metadata.parse_session_start_info_plugin_data(content[hparams_metadata.SESSION_START_INFO_TAG])
    assert start.hparams["learning_rate"].number_value == RATES["b"]
    assert start.hparams["model.num_hidden_layers"].number_value == 2
    assert start.hparams["task"].string_value == "pretrain"
    assert start.hparams["init_from"].string_value == ""         # None: still a column, of strings
    assert start.hparams["resume"].bool_value is False
    assert start.hparams["run_name"].string_value == "b"
    assert "out_dir" not in start.hparams and "tensorboard_dir" not in start.hparams   # in the text only
    assert config["out_dir"] and "tensorboard_dir" in config
    # no experiment record: TensorBoard works out the columns, the differing ones first
    assert hparams_metadata.EXPERIMENT_TAG not in content
    end = hparams_metadata.parse_session_end_info_plugin_data(content[hparams_metadata.SESSION_END_INFO_TAG])
    assert end.status == api_pb2.STATUS_SUCCESS


def test_no_description_before_the_first_log_and_failure_is_recorded(tmp_path):
    log = TBLogger(tmp_path)
    log.describe({"lr": 0.5, "nested": {"size": 3}})
    assert list(tmp_path.iterdir()) == []            # describing writes nothing by itself
    with pytest.raises(RuntimeError), log:
        log.scalars(1, {"train/loss": 2.0})
        raise RuntimeError("training broke")
    acc = accumulator(tmp_path)
    content = acc.PluginTagToContent(hparams_metadata.PLUGIN_NAME)
    start = hparams_metadata.parse_session_start_info_plugin_data(content[hparams_metadata.SESSION_START_INFO_TAG])
    assert start.hparams["nested.size"].number_value == 3
    end = hparams_metadata.parse_session_end_info_plugin_data(content[hparams_metadata.SESSION_END_INFO_TAG])
    assert end.status == api_pb2.STATUS_FAILURE
    log.close()                                      # twice is fine, and writes nothing more


def test_flatten_makes_columns_of_plain_values():
    assert flatten({"a": 1, "b": None, "c": {"d": [1, 2], "e": {"f": True}}, "g": Path("x")}) == \
        {"a": 1, "b": "", "c.d": "[1, 2]", "c.e.f": True, "g": "x"}


# ---- a real TensorBoard over the two runs ----

def start_tensorboard(tb_env, logdir: Path) -> str:
    """A TensorBoard on loopback over ``logdir`` (stopped by tb_env); its base URL once it answers."""
    port = tb_env.port
    tb_env.spawn([sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1",
                  "--port", str(port)])
    url = f"http://127.0.0.1:{port}"
    assert wait_for(lambda: _answers(url + "/data/environment"), timeout=60), "TensorBoard never answered"
    return url


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def both_runs_loaded(url: str) -> dict[str, dict] | None:
    groups = session_groups(url)
    return groups if set(groups) == set(RATES) and all(g["metricValues"] for g in groups.values()) else None


def test_hparams_api_lists_each_run_with_its_final_eval_loss(tb_env, runs):
    url = start_tensorboard(tb_env, runs)
    groups = wait_for(lambda: both_runs_loaded(url), timeout=60)
    assert groups, f"the hparams plugin never listed runs {sorted(RATES)}: {session_groups(url)}"
    for name, lr in RATES.items():
        group = groups[name]
        assert group["hparams"]["learning_rate"] == pytest.approx(lr)
        assert group["hparams"]["task"] == "pretrain"
        [metric] = [m for m in group["metricValues"] if m["name"]["tag"] == "eval/loss"]
        final_step, final_loss = scalars(accumulator(runs / name))["eval/loss"][-1]
        assert metric["trainingStep"] == final_step == 4
        assert metric["value"] == pytest.approx(final_loss)
        assert [s["status"] for s in group["sessions"]] == ["STATUS_SUCCESS"]
    experiment = post_json(url + "/data/plugin/hparams/experiment", {})
    assert "eval/loss" in [m["name"]["tag"] for m in experiment["metricInfos"]]
    assert {"learning_rate", "task", "model.hidden_size"} <= {h["name"] for h in experiment["hparamInfos"]}
    # the HPARAMS table ticks the first five columns of this list, and the ones that differ come first
    assert default_columns(experiment) == ["learning_rate", "run_name"]


def test_hparams_tab_in_headless_chromium(tb_env, runs, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install chromium): no screenshot of the HPARAMS tab")
    url = start_tensorboard(tb_env, runs)
    assert wait_for(lambda: both_runs_loaded(url), timeout=60), "the hparams plugin never listed both runs"
    shot = tmp_path / "hparams.png"
    # Chromium puts a socket in TMPDIR, and tb_env's (under tmp_path) is longer than a socket path may be
    with tempfile.TemporaryDirectory(prefix="chromium-", dir="/tmp" if Path("/tmp").is_dir() else None) as short:
        proc = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}", "--dump-dom",
             "--window-size=1400,900", "--virtual-time-budget=15000", f"--user-data-dir={short}/profile",
             f"{url}/#hparams"],
            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
            env={**os.environ, "TMPDIR": short})
    assert proc.returncode == 0, proc.stderr[-2000:]
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (1400, 900)
    assert len(png) > 30_000, f"screenshot is only {len(png)} bytes: nothing drawn?"   # blank: ~6 KB
    # The picture's size can't tell the table from TensorBoard's (larger) "No hparams data" page;
    # the page as Chromium rendered it can: there the HPARAMS tab is disabled, here it is live.
    tab = hparams_tab(proc.stdout)
    assert 'aria-selected="true"' in tab and 'aria-disabled="false"' in tab, tab


def hparams_tab(dom: str) -> str:
    """The opening tag of the HPARAMS tab in TensorBoard's rendered header ("" if absent)."""
    match = re.search(r'(<div role="tab"[^>]*>)(?:(?!<div role="tab").)*?data-plugin-id="hparams"', dom, re.S)
    return match.group(1) if match else ""
