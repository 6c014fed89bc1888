"""CI mode (tests/ci_mode.py): a real pytest run, in a child process, over a small suite whose
tests skip the ways ours do (``pytest.skip``, ``skipif``, ``importorskip``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from ci_mode import allowed_skips

TESTS = Path(__file__).resolve().parent

SUITE = '''
import pytest

def test_needs_a_widget():
    pytest.skip("no widget here (apt-get install widget)")

@pytest.mark.skipif(True, reason="no gadget to preload")
def test_needs_a_gadget():
    pass

def test_needs_a_module():
    pytest.importorskip("a_module_nobody_has_17")

@pytest.mark.xfail(reason="a known bug, not a skip")
def test_known_bug():
    assert False

def test_runs():
    assert True
'''


HOOKS = "pytest_collectreport, pytest_runtest_makereport, pytest_sessionfinish, pytest_terminal_summary"


def run_suite(tmp_path: Path, *, module_skip: bool = False, **env: str) -> subprocess.CompletedProcess:
    (tmp_path / "test_suite.py").write_text(SUITE, encoding="utf-8")
    if module_skip:  # a whole module skipped at collection, as test_packaging.py does without tomllib
        (tmp_path / "test_module.py").write_text(
            'import pytest\n\npytest.importorskip("tomllib_nobody_has_17")\n\n\ndef test_never():\n    pass\n',
            encoding="utf-8")
    (tmp_path / "conftest.py").write_text(f"from ci_mode import {HOOKS}  # noqa: F401\n", encoding="utf-8")
    environment = {name: value for name, value in os.environ.items() if name not in ("CI", "TB_LAZY_CI_ALLOW_SKIP")}
    environment.update(env, PYTHONPATH=os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])))
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-ra", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
         "-c", os.devnull, str(tmp_path)],
        capture_output=True, text=True, env=environment, cwd=tmp_path, timeout=120,
    )


def test_outside_ci_a_skip_is_a_skip(tmp_path):
    result = run_suite(tmp_path)
    assert result.returncode == 0, result.stdout
    assert "1 passed, 3 skipped, 1 xfailed" in result.stdout
    assert "CI mode" not in result.stdout


def test_under_ci_every_skip_fails_with_its_reason(tmp_path):
    result = run_suite(tmp_path, CI="true")
    assert result.returncode == 1, result.stdout
    assert "skipped" not in result.stdout.splitlines()[-1] and "1 passed" in result.stdout, result.stdout
    for reason in ("no widget here", "no gadget to preload", "could not import 'a_module_nobody_has_17'"):
        assert f"CI=true: this test would have skipped ({reason}" in result.stdout, result.stdout
    assert "1 xfailed" in result.stdout, "an expected failure is not a skip"
    assert "none allowed: every test that would skip failed instead" in result.stdout


def test_under_ci_an_allowed_skip_is_listed_with_its_reason(tmp_path):
    result = run_suite(tmp_path, CI="true", TB_LAZY_CI_ALLOW_SKIP="no gadget: this kernel has none; no widget: rare")
    lines = result.stdout.splitlines()
    assert result.returncode == 1, "the module skip is still not allowed"
    assert "SKIPPED" in result.stdout and "no gadget to preload" in result.stdout
    assert "'no gadget' (this kernel has none): 1 test(s) skipped" in lines
    assert "'no widget' (rare): 1 test(s) skipped" in lines
    assert any("test_suite.py::test_needs_a_gadget" in line for line in lines)
    assert any(line.startswith("FAILED") and "test_needs_a_module" in line for line in lines), result.stdout


def test_under_ci_with_all_skips_allowed_the_run_passes(tmp_path):
    allow = "no widget: w; no gadget: g; a_module_nobody_has_17: m"
    result = run_suite(tmp_path, CI="true", TB_LAZY_CI_ALLOW_SKIP=allow)
    assert result.returncode == 0, result.stdout
    assert "1 passed, 3 skipped, 1 xfailed" in result.stdout


@pytest.mark.parametrize(("text", "expected"), [
    ("", {}),
    ("no user namespace: the kernel has none", {"no user namespace": "the kernel has none"}),
    (" a : x, y ; b: z;", {"a": "x, y", "b": "z"}),
    ("bare", {"bare": "(no reason given)"}),
])
def test_the_allow_list_format(text, expected):
    assert allowed_skips(text) == expected


def test_a_module_skipped_at_collection_fails_the_run_under_ci(tmp_path):
    allow = "no widget: w; no gadget: g; a_module_nobody_has_17: m"
    result = run_suite(tmp_path, module_skip=True, CI="true", TB_LAZY_CI_ALLOW_SKIP=allow)
    assert result.returncode == 1, result.stdout
    assert "FAILED test_module.py: would have skipped (could not import 'tomllib_nobody_has_17'" in result.stdout
    assert "1 passed" in result.stdout, "the rest of the run still ran"


def test_a_module_skip_can_be_allowed_and_is_a_skip_outside_ci(tmp_path):
    allow = "no widget: w; no gadget: g; a_module_nobody_has_17: m; tomllib_nobody_has_17: Python 3.10"
    result = run_suite(tmp_path, module_skip=True, CI="true", TB_LAZY_CI_ALLOW_SKIP=allow)
    assert result.returncode == 0, result.stdout
    assert "'tomllib_nobody_has_17' (Python 3.10): 1 test(s) skipped" in result.stdout
    assert run_suite(tmp_path, module_skip=True).returncode == 0
