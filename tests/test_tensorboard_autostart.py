"""The pipelines carry TensorBoard auto-start, and carry it from one shared file.

Runs under pytest and on its own with the standard library alone:
``python -I tests/test_tensorboard_autostart.py`` (no site-packages, no pytest).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

PIPELINES = Path(__file__).resolve().parent.parent / "pipelines"
RUN_MLX = PIPELINES / "run_mlx.sh"
DISTILL = PIPELINES / "run_mlx_distill_ollama.sh"
SHARED = PIPELINES / "lib" / "tb_autostart.sh"


class Skipped(Exception):
    """A skip when run as a script without pytest (the runner below reports it as 'skip')."""


def skip(reason: str) -> None:
    """``pytest.skip`` under pytest; a ``Skipped`` the script runner reports, without it."""
    try:
        import pytest
    except ImportError:
        raise Skipped(reason) from None
    pytest.skip(reason)


def test_both_scripts_carry_auto_start_and_tb_auto():
    for script in (RUN_MLX, DISTILL):
        text = script.read_text(encoding="utf-8")
        assert "# [tb] auto-start" in text, f"{script.name} lacks the '# [tb] auto-start' marker"
        assert "TB_AUTO" in text, f"{script.name} doesn't document TB_AUTO"
        assert 'source "$HERE/lib/tb_autostart.sh"' in text, f"{script.name} doesn't use the shared file"
        assert "tb_lazy watch" not in text, f"{script.name} copies the watcher spawn instead of sourcing it"


def test_run_mlx_names_tensorboard_logdir_and_every_variable():
    text = RUN_MLX.read_text(encoding="utf-8")
    assert "tensorboard --logdir" in text
    for name in ("TB_AUTO", "TB_HOST", "TB_PORT", "TB_KEEP"):
        assert name in text, name


def test_distill_script_handles_both_tensorboard_dir_spellings():
    text = DISTILL.read_text(encoding="utf-8")
    assert "--tensorboard_dir" in text and "tb_logdir_from_args" in text
    for args, expected in (
        (["--max_steps", "5", "--tensorboard_dir", "tf dir/x"], "tf dir/x"),
        (["--tensorboard_dir=运行 1"], "运行 1"),
        (["--max_steps", "5"], ""),
        (["--tensorboard_dir"], ""),
    ):
        result = subprocess.run(
            ["bash", "-c", 'source "$0"; tb_logdir_from_args "$@"', str(SHARED), *args],
            capture_output=True, text=True, check=True,
        )
        assert result.stdout == expected, (args, result.stdout)


def test_the_shared_file_spawns_the_watcher_for_the_pipeline():
    text = SHARED.read_text(encoding="utf-8")
    assert '-m tb_lazy watch "$logdir" --exit-with "$$"' in text


def test_scripts_are_shellcheck_clean():
    if shutil.which("shellcheck") is None:
        skip("shellcheck is not installed (apt-get install shellcheck)")
    result = subprocess.run(
        ["shellcheck", "-x", str(RUN_MLX), str(DISTILL), str(SHARED), str(PIPELINES / "lib" / "common.sh"),
         str(PIPELINES.parent / "tests" / "base_install_check.sh")],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout


if __name__ == "__main__":
    failed = skipped = 0
    tests = [(name, fn) for name, fn in sorted(globals().items()) if name.startswith("test_")]
    for name, fn in tests:
        try:
            fn()
        except KeyboardInterrupt:
            raise
        except BaseException as error:  # noqa: BLE001 - pytest.skip raises a BaseException
            if type(error).__name__ == "Skipped":
                skipped += 1
                print(f"skip {name}: {error}")
                continue
            failed += 1
            print(f"FAIL {name}: {error!r}")
        else:
            print(f"ok   {name}")
    print(f"{len(tests) - failed - skipped} passed, {skipped} skipped, {failed} failed")
    sys.exit(1 if failed else 0)
