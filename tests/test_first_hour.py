"""The first hour of a new user: every message once, on the right stream, and nothing costly
before an error (bad TB_* values, bad training arguments, no checkpoint to sample from).

The pipelines run for real (bash, the project's Python); none of these runs gets as far as
training, so they take a second or two each. The teacher is a loopback HTTP server that only
counts requests: these tests need it never to be asked.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import REPO, isolated_env, pipeline_env

from tb_lazy.config import UsageError, check_environment

RUN_MLX = REPO / "pipelines" / "run_mlx.sh"
DISTILL = REPO / "pipelines" / "run_mlx_distill_ollama.sh"
CONFIG_SCRIPT = REPO / "tb_lazy" / "config.py"
BAD_TB = [("TB_PORT", "abc"), ("TB_PORT", "70000"), ("TB_AUTO", "maybe"), ("TB_KEEP", "2"),
          ("TB_HOST", "http://0.0.0.0")]


def run(args: list[str], *, env: dict[str, str], cwd: Path, timeout: float = 120):
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


class CountingTeacher(ThreadingHTTPServer):
    """Loopback stand-in for a teacher that answers nothing and counts every request."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Count)
        self.requests = 0
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Count(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def _count(self) -> None:
        with self.server.lock:
            self.server.requests += 1
        self.send_response(500)
        self.end_headers()

    do_GET = do_POST = _count


@pytest.fixture
def teacher():
    server = CountingTeacher()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


# ---- TB_* checked once, at the start ----------------------------------------------------------


@pytest.mark.parametrize("name,value", BAD_TB)
def test_check_environment_names_the_variable_and_the_accepted_values(name, value):
    with pytest.raises(UsageError) as caught:
        check_environment({name: value})
    message = str(caught.value)
    assert message.startswith(f"{name}={value!r}") and "(" in message, message


def test_check_environment_accepts_defaults_empty_values_and_tb_auto_off():
    check_environment({})
    check_environment({"TB_AUTO": "", "TB_HOST": "", "TB_PORT": " ", "TB_KEEP": ""})
    check_environment({"TB_AUTO": "1", "TB_HOST": "0.0.0.0", "TB_PORT": "6007", "TB_KEEP": "off"})
    check_environment({"TB_HOST": "::"})
    check_environment({"TB_AUTO": "0", "TB_PORT": "abc", "TB_KEEP": "2"})   # unused when off
    with pytest.raises(UsageError, match="TB_AUTO"):
        check_environment({"TB_AUTO": "maybe", "TB_PORT": "6006"})


def test_config_runs_as_a_stdlib_only_script(tmp_path):
    """What the pipelines run before any venv exists: no site-packages at all (-I -S)."""
    base = [sys.executable, "-I", "-S", str(CONFIG_SCRIPT), "run_mlx.sh"]
    bad = run(base, env={"TB_PORT": "abc"}, cwd=tmp_path)
    assert bad.returncode == 2 and bad.stdout == ""
    assert lines(bad.stderr) == ["run_mlx.sh: error: TB_PORT='abc' is not a port number (1-65535)"]
    good = run(base, env={"TB_PORT": "6007", "TB_HOST": "0.0.0.0"}, cwd=tmp_path)
    assert (good.returncode, good.stdout, good.stderr) == (0, "", "")


@pytest.mark.parametrize("name,value", BAD_TB)
def test_run_mlx_bad_tb_value_is_one_line_and_exit_2_before_anything(tmp_path, name, value):
    result = run(["bash", str(RUN_MLX), "--smoke-test"], env=pipeline_env(tmp_path, **{name: value}),
                 cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    (line,) = lines(result.stderr)
    assert line.startswith(f"run_mlx.sh: error: {name}=") and "Traceback" not in result.stderr
    for made in ("data", "out", "tf_dir"):
        assert not (tmp_path / made).exists(), f"{made} was created before the usage error"


@pytest.mark.parametrize("name,value", BAD_TB[::2])
def test_distill_bad_tb_value_exits_2_without_asking_the_teacher(tmp_path, teacher, name, value):
    env = pipeline_env(tmp_path, OLLAMA_URL=teacher.url, **{name: value})
    result = run(["bash", str(DISTILL), "--smoke-test", "--tensorboard_dir", str(tmp_path / "tf_dir")],
                 env=env, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    (line,) = lines(result.stderr)
    assert f"{name}=" in line and result.stdout == ""
    assert teacher.requests == 0
    assert not (tmp_path / "data").exists() and not (tmp_path / "out").exists()


def test_tb_auto_off_ignores_the_other_variables(tmp_path):
    """TB_AUTO=0: nothing starts, so TB_PORT isn't read; the run goes on (here: to 'nothing to do')."""
    env = pipeline_env(tmp_path, TB_AUTO="0", TB_PORT="abc", SKIP_PRETRAIN="1", SKIP_SFT="1")
    result = run(["bash", str(RUN_MLX), "--skip-infer"], env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "TB_PORT" not in result.stderr


def test_train_bad_tb_value_is_one_line_before_reading_data(tmp_path):
    env = {**isolated_env(tmp_path), "TB_KEEP": "maybe"}
    args = [sys.executable, "-m", "mlx_train.train", "--data_path", str(tmp_path / "missing.jsonl"),
            "--out_dir", str(tmp_path / "out")]
    result = run([*args, "--tensorboard_dir", str(tmp_path / "tb")], env=env, cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert lines(result.stderr) == ["error: TB_KEEP='maybe' is not a yes/no value (use 1 or 0)"]
    assert not (tmp_path / "out").exists() and not (tmp_path / "tb").exists()
    # without --tensorboard_dir nothing would start: TB_* are not its business
    assert run([*args, "--check"], env=env, cwd=tmp_path).returncode == 0


# ---- validation before cost --------------------------------------------------------------------


def test_train_check_validates_without_data_or_model(tmp_path):
    env = {**isolated_env(tmp_path), "TB_AUTO": "0"}
    base = [sys.executable, "-m", "mlx_train.train", "--check", "--task", "sft", "--data_path",
            str(tmp_path / "not-yet.jsonl"), "--out_dir", str(tmp_path / "out")]
    ok = run(base, env=env, cwd=tmp_path)
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, "", "")
    assert list(tmp_path.iterdir()) == [tmp_path / "tmp"], "--check wrote something"
    for extra, needle in ((["--bogus"], "--bogus"), (["--batch_size", "0"], "--batch_size=0"),
                          (["--init_from", str(tmp_path / "nowhere")], "nowhere")):
        bad = run([*base, *extra], env=env, cwd=tmp_path)
        assert bad.returncode == 2 and bad.stdout == "", (extra, bad.stderr)
        (line,) = lines(bad.stderr)
        assert needle in line and "Traceback" not in bad.stderr


def test_train_help_shows_defaults_and_nothing_on_stdout_but_help(tmp_path):
    result = run([sys.executable, "-m", "mlx_train.train", "-h"], env=isolated_env(tmp_path), cwd=tmp_path)
    assert result.returncode == 0 and result.stderr == ""
    text = " ".join(result.stdout.split())
    for shown in ("(default: 256)", "(default: 8)", "(default: 42)", "(required)",
                  "pretrain | sft | dpo | r1; default: pretrain", "pretrain 0.001", "dpo 0.0001", "--check"):
        assert shown in text, shown
    assert "[blas]" not in result.stdout


def test_distill_bad_training_argument_exits_2_without_asking_the_teacher(tmp_path, teacher):
    env = pipeline_env(tmp_path, OLLAMA_URL=teacher.url)
    result = run(["bash", str(DISTILL), "--smoke-test", "--bogus"], env=env, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert lines(result.stderr) == ["python -m mlx_train.train: error: unrecognized arguments: --bogus (see --help)"]
    assert teacher.requests == 0
    assert not (tmp_path / "data").exists() and not (tmp_path / "out").exists()


def test_distill_missing_init_from_exits_2_without_asking_the_teacher(tmp_path, teacher):
    env = pipeline_env(tmp_path, OLLAMA_URL=teacher.url, INIT_FROM=str(tmp_path / "no-such-student"))
    result = run(["bash", str(DISTILL), "--smoke-test"], env=env, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    (line,) = lines(result.stderr)
    assert "no-such-student" in line
    assert teacher.requests == 0


def test_run_mlx_bad_training_argument_exits_2_before_data_generation(tmp_path):
    result = run(["bash", str(RUN_MLX), "--smoke-test", "--", "--max_steps", "-1"],
                 env=pipeline_env(tmp_path), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert lines(result.stderr) == ["error: --max_steps=-1 must not be negative"]
    assert not (tmp_path / "data").exists() and not (tmp_path / "out").exists()


def test_run_mlx_missing_data_file_of_a_later_stage_exits_2_before_the_first(tmp_path):
    env = pipeline_env(tmp_path, RUN_R1="1", R1_DATA=str(tmp_path / "typo.jsonl"))
    result = run(["bash", str(RUN_MLX), "--smoke-test"], env=env, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert lines(result.stderr) == [f"run_mlx.sh: error: R1_DATA={tmp_path / 'typo.jsonl'}: no such file (stage r1)"]
    assert not (tmp_path / "data").exists() and not (tmp_path / "out").exists()


def fresh_clone(root: Path) -> Path:
    """The files a fresh clone has (no .venv, no data, no checkpoints) under ``root/repo``."""
    repo = root / "repo"
    listed = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True)
    names = listed.stdout.split() if listed.returncode == 0 else []
    if not names:  # not a git checkout: what the pipelines need before their venv
        names = [str(p.relative_to(REPO)) for p in (REPO / "pipelines").rglob("*.sh")] + ["tb_lazy/config.py"]
    for name in names:
        if (REPO / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, repo / name)
    return repo


@pytest.mark.parametrize("args,extra", [(["--infer-only"], {}),
                                        ([], {"SKIP_PRETRAIN": "1", "SKIP_SFT": "1"})])
def test_nothing_to_sample_from_exits_1_before_any_venv_work(tmp_path, args, extra):
    """On a fresh clone: no checkpoint, no venv; the answer comes at once and no .venv is made."""
    repo = fresh_clone(tmp_path)
    env = {k: v for k, v in isolated_env(tmp_path).items() if k not in ("PY", "PYTHONPATH")}
    env.update(extra)
    started = time.monotonic()
    result = run(["bash", "pipelines/run_mlx.sh", *args], env=env, cwd=repo, timeout=60)
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    (line,) = lines(result.stderr)
    assert "no checkpoint under ./out" in line and result.stdout == ""
    assert not (repo / ".venv").exists() and not (repo / "data").exists()
    assert elapsed < 20, f"{elapsed:.1f} s: something costly ran before the check"


# ---- no bash internals --------------------------------------------------------------------------


def test_nothing_trains_nothing_said_and_no_watcher(tmp_path):
    """The issue's reproduction: all stages skipped printed 'wait_for: No record of process N'."""
    env = pipeline_env(tmp_path, SKIP_PRETRAIN="1", SKIP_SFT="1")
    for _ in range(3):
        result = run(["bash", str(RUN_MLX), "--skip-infer"], env=env, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert (result.stdout, result.stderr) == ("", "")
    assert not (tmp_path / "data").exists(), "no stage runs: no data is generated"


def test_a_child_signalled_before_exec_does_not_run_the_scripts_exit_trap(tmp_path):
    """A background child stopped at once (before it has exec'd) used to run the script's EXIT
    trap in the forked bash, which printed 'wait_for: No record of process N'."""
    script = tmp_path / "stop_at_once.sh"
    script.write_text(
        "set -Eeuo pipefail\n"
        f"source {REPO / 'pipelines' / 'lib' / 'common.sh'}\n"
        "P=''\n"
        'cleanup() { stop_child "$P"; }\n'
        "install_traps cleanup\n"
        "/bin/true\n"            # a finished foreground child: what the EXIT trap's bash tripped on
        "spawn P sleep 30\n"
    )
    for _ in range(5):
        result = run(["bash", str(script)], env=isolated_env(tmp_path), cwd=tmp_path)
        assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


# ---- generated text: whole characters ---------------------------------------------------------


def test_whole_characters_never_shows_a_split_character(tmp_path):
    """Real tokenizer, real mlx_lm streaming detokenizer: a rare character falls apart into byte
    tokens; cut there (max_tokens), the raw stream ends in U+FFFD, ours in whole characters."""
    from mlx_lm.utils import load_tokenizer

    from mlx_train.infer import whole_characters
    from mlx_train.tokenizer import train_tokenizer

    corpus = ["hello world, the cat sat on the mat"] * 50 + ["你好，世界"] * 20
    train_tokenizer(corpus, vocab_size=300, out_dir=tmp_path / "tok", max_length=64)
    tokenizer = load_tokenizer(tmp_path / "tok")
    text = "cat 龘 mat 你好"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) > len(text.split()), "the rare character should take several tokens"

    def stream(n: int) -> list[str]:          # what stream_generate yields for the first n tokens
        detok = tokenizer.detokenizer
        detok.reset()
        pieces = []
        for token in ids[:n]:
            detok.add_token(token)
            pieces.append(detok.last_segment)
        detok.finalize()
        return [*pieces, detok.last_segment]

    raw_broken = 0
    for n in range(1, len(ids) + 1):
        raw = "".join(stream(n))
        raw_broken += "\ufffd" in raw
        ours = "".join(whole_characters(stream(n)))
        assert "\ufffd" not in ours
        assert ours == raw.rstrip("\ufffd") and text.startswith(ours.rstrip()), (n, ours)
    assert raw_broken, "no cut inside a character: the test would prove nothing"
    assert "".join(whole_characters(stream(len(ids)))) == text
