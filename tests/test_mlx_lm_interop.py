"""mlx-lm's own tools on mlx_train's output, as subprocesses: ``mlx_lm.generate``/``server``/
``lora``/``fuse`` given a stage folder (``out/<stage>``), and our exported data; the fused
model back through ``mlx_train.infer``. One tiny SFT run is shared by the module."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlx.core as mx
import pytest
from conftest import REPO, free_port

from mlx_train import train
from mlx_train.checkpoint import publish, recover_interrupted_saves
from mlx_train.datagen import write_all
from mlx_train.runs import find_checkpoint, list_checkpoints

TINY = ["--preset", "tiny", "--hidden_size", "64", "--num_heads", "4", "--intermediate_size", "128",
        "--seq_len", "64", "--batch_size", "4", "--vocab_size", "512", "--warmup_steps", "1",
        "--eval_batches", "1", "--sample_tokens", "0", "--log_interval", "1"]
STAGE_FILES = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "train_config.json"}


def env(tmp: Path) -> dict[str, str]:
    """Offline, no TensorBoard, our code importable; an empty (existing) HF cache."""
    cache = tmp / "hf-cache"
    cache.mkdir(exist_ok=True)
    return dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache), TB_AUTO="0",
                PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))


def run(tmp: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env(tmp),
                          cwd=tmp, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def sft(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny SFT stage folder (steps 2 and 4 saved) and the data it was trained on."""
    root = tmp_path_factory.mktemp("interop")
    data = write_all(root / "data", seed=0, scale=0.05)["sft"]
    out = root / "out" / "sft"
    old = os.environ.get("TB_AUTO")
    os.environ["TB_AUTO"] = "0"
    try:
        rc = train.main(["--task", "sft", "--data_path", str(data), "--out_dir", str(out), "--max_steps", "4",
                         "--save_interval", "2", "--eval_interval", "100", "--run_name", "r", *TINY])
    finally:
        os.environ.pop("TB_AUTO") if old is None else os.environ.__setitem__("TB_AUTO", old)
    assert rc == 0
    return out, data


def test_stage_folder_is_the_latest_step_as_a_model(sft):
    out, _ = sft
    latest = list_checkpoints(out / "r")[-1]        # run r's series
    assert latest.name == "step_0000004"
    assert STAGE_FILES <= {p.name for p in out.iterdir()}
    assert not (out / "optimizer.safetensors").exists() and not (out / "trainer_state.json").exists()
    assert (out / "model.safetensors").stat().st_ino == (latest / "model.safetensors").stat().st_ino
    _, meta = mx.load(str(out / "model.safetensors"), return_metadata=True)
    assert meta["step"] == "4"
    for name in STAGE_FILES - {"model.safetensors"}:
        assert (out / name).read_bytes() == (latest / name).read_bytes(), name
    for name in ("config.json", "tokenizer.json"):      # same bytes at step 4: left as step 2 wrote them
        assert (out / name).stat().st_mtime_ns < (latest / name).stat().st_mtime_ns, name
    assert find_checkpoint(out) == latest          # --init_from records the step folder


def test_mlx_lm_generate_and_our_infer_take_the_stage_folder(sft, tmp_path):
    out, _ = sft
    gen = run(tmp_path, "-m", "mlx_lm", "generate", "--model", str(out), "--prompt", "What is 2 plus 3?",
              "--max-tokens", "4")
    assert gen.returncode == 0, gen.stderr[-2000:]
    assert "Generation:" in gen.stdout or "tokens-per-sec" in gen.stdout, gen.stdout
    ours = run(tmp_path, "-m", "mlx_train.infer", "--checkpoint", str(out), "--prompt", "What is 2 plus 3?",
               "--chat", "--max_tokens", "4")
    assert ours.returncode == 0, ours.stderr[-2000:]
    assert f"{out / 'r' / 'step_0000004'} (run r, step 4)" in ours.stderr


def test_mlx_lm_server_serves_the_stage_folder(sft, tmp_path):
    out, _ = sft
    port = free_port()
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "mlx_lm", "server", "--model", str(out), "--host", "127.0.0.1",
                             "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env(tmp_path),
                            cwd=tmp_path, stdin=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/v1/models", timeout=5) as r:
                    models = json.load(r)
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()
                time.sleep(0.3)
        assert models["object"] == "list"
        body = json.dumps({"messages": [{"role": "user", "content": "What is 2 plus 3?"}],
                           "max_tokens": 4, "temperature": 0}).encode()
        req = urllib.request.Request(f"{base}/v1/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            reply = json.load(r)
        assert reply["choices"][0]["message"]["role"] == "assistant"
        assert reply["usage"]["completion_tokens"] >= 1
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


def test_lora_on_exported_data_then_fuse_then_our_infer(sft, tmp_path):
    out, data = sft
    exported = tmp_path / "mlx_data"
    rc = run(tmp_path, "-m", "mlx_train.data", "export", "--task", "sft", "--data_path", str(data),
             "--out_dir", str(exported))
    assert rc.returncode == 0, rc.stderr
    assert {p.name for p in exported.iterdir()} == {"train.jsonl", "valid.jsonl"}
    lora = run(tmp_path, "-m", "mlx_lm", "lora", "--model", str(out), "--train", "--data", str(exported),
               "--iters", "3", "--batch-size", "2", "--num-layers", "-1", "--max-seq-length", "64",
               "--val-batches", "1", "--steps-per-report", "1", "--steps-per-eval", "3",
               "--learning-rate", "1e-2", "--adapter-path", str(tmp_path / "adapters"))
    assert lora.returncode == 0, lora.stderr[-3000:]
    assert (tmp_path / "adapters" / "adapters.safetensors").is_file()
    fused = tmp_path / "fused"
    fuse = run(tmp_path, "-m", "mlx_lm", "fuse", "--model", str(out), "--adapter-path", str(tmp_path / "adapters"),
               "--save-path", str(fused))
    assert fuse.returncode == 0, fuse.stderr[-3000:]
    base, tuned = mx.load(str(out / "model.safetensors")), mx.load(str(fused / "model.safetensors"))
    assert set(base) == set(tuned)
    assert any(not mx.array_equal(base[k], tuned[k]).item() for k in base)   # the adapters were fused in
    infer = run(tmp_path, "-m", "mlx_train.infer", "--checkpoint", str(fused), "--prompt", "What is 2 plus 3?",
                "--chat", "--max_tokens", "4")
    assert infer.returncode == 0, infer.stderr[-2000:]
    assert f"[infer] {fused}" in infer.stderr


def _fake_step(out: Path, step: int, *, config: str) -> Path:
    """A step folder with real safetensors weights (tagged with the step) and the given config."""
    folder = out / f"step_{step:07d}"
    folder.mkdir(parents=True)
    mx.save_safetensors(str(folder / "model.safetensors"), {"w": mx.full((4,), step, mx.float32)},
                        metadata={"step": str(step)})
    (folder / "config.json").write_text(config)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "train_config.json"):
        (folder / name).write_text(f"{name} {config}")
    (folder / "optimizer.safetensors").write_text("never published")
    return folder


def test_publish_replaces_only_the_weights_within_a_run(tmp_path):
    out = tmp_path / "out"
    publish(_fake_step(out, 1, config="A"), out)
    config_inode = (out / "config.json").stat().st_ino
    step2 = _fake_step(out, 2, config="A")
    publish(step2, out)
    assert (out / "config.json").stat().st_ino == config_inode          # untouched: same bytes
    assert (out / "model.safetensors").stat().st_ino == (step2 / "model.safetensors").stat().st_ino
    assert mx.load(str(out / "model.safetensors"))["w"].tolist() == [2.0] * 4
    assert not (out / "optimizer.safetensors").exists()
    step3 = _fake_step(out, 3, config="B")                                # another model into the folder
    publish(step3, out)
    assert (out / "config.json").read_text() == "B"
    assert mx.load(str(out / "model.safetensors"))["w"].tolist() == [3.0] * 4
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


def test_interrupted_publish_leftovers_are_cleaned(tmp_path):
    out = tmp_path / "out"
    publish(_fake_step(out, 1, config="A"), out)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    leftover = out / f".tmp_model.safetensors_{dead}_0123abcd"          # a writer killed mid-publish
    leftover.write_bytes(b"half")
    os.utime(leftover, (time.time() - 3600, time.time() - 3600))     # a reused PID started later: still gone
    assert leftover in recover_interrupted_saves(out)
    assert not leftover.exists() and (out / "model.safetensors").is_file()
