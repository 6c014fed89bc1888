"""What pyproject.toml declares against what the code imports.

`pip install tb-lazy` must give the watcher what it imports and nothing of the training stack;
`[notebook]` what the IPython extension (tb_lazy/notebook.py, and only it) imports; `[train]` every
module mlx_train imports; `[dev]` is `[train]` and `[notebook]` plus the test and build tools. The
imports are read from the source (every `import`, also those inside functions); the module to
distribution mapping comes from the installed distributions' own metadata. The end-to-end check
of a real base-only install is tests/base_install_check.sh (run by .ci/run).
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OWN = {"tb_lazy", "mlx_train"}
NOTEBOOK = "tb_lazy/notebook.py"
TRAINING_ONLY = {"numpy", "tensorboardX", "mlx", "mlx_lm", "tokenizers", "jinja2"}


def _name(requirement: str) -> str:
    """PEP 503 normalized project name of a requirement string ("mlx[cpu]>=0.25; ..." -> "mlx")."""
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement.strip())
    assert match, requirement
    return re.sub(r"[-_.]+", "-", match.group()).lower()


def _project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def _imports(package: str) -> dict[str, set[str]]:
    """Top-level third-party modules imported anywhere under REPO/package -> files importing them."""
    found: dict[str, set[str]] = {}
    for path in sorted((REPO / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in OWN:
                    found.setdefault(top, set()).add(str(path.relative_to(REPO)))
    return found


def _undeclared(package: str, declared: set[str]) -> dict[str, set[str]]:
    providers = importlib.metadata.packages_distributions()
    missing = {}
    for module, files in _imports(package).items():
        dists = {_name(d) for d in providers.get(module, [])}
        assert dists, f"{module} (imported by {sorted(files)}) is not installed here"
        if not dists & declared:
            missing[module] = files
    return missing


def test_the_base_package_declares_what_tb_lazy_imports_and_nothing_of_training():
    base = {_name(r) for r in _project()["dependencies"]}
    assert base == {"watchdog", "psutil", "tensorboard"}
    assert _undeclared("tb_lazy", base) == {"IPython": {NOTEBOOK}}  # the extension's, in [notebook]
    assert TRAINING_ONLY.isdisjoint(_imports("tb_lazy")), _imports("tb_lazy")


def test_the_notebook_extra_declares_what_the_ipython_extension_imports():
    project = _project()
    notebook = {_name(r) for r in project["optional-dependencies"]["notebook"]}
    assert notebook == {"ipython", "ipykernel"}  # ipykernel: the kernel the magic runs in
    assert _undeclared("tb_lazy", {_name(r) for r in project["dependencies"]} | notebook) == {}


def test_the_train_extra_declares_every_module_mlx_train_imports():
    project = _project()
    declared = {_name(r) for r in project["dependencies"] + project["optional-dependencies"]["train"]}
    assert _undeclared("mlx_train", declared) == {}
    assert {"numpy", "jinja2", "tensorboardx", "mlx", "mlx-lm", "tokenizers"} <= declared


def test_dev_is_train_and_notebook_plus_the_test_and_build_tools():
    """The README's and CI's `pip install -e ".[dev]"` sets up everything the tests and CI need."""
    dev = _project()["optional-dependencies"]["dev"]
    assert {_name(r) for r in dev} == {"tb-lazy", "pytest", "ruff", "nbclient", "nbformat", "build"}
    assert any(re.fullmatch(r"tb-lazy\[train, ?notebook\]", r.strip()) for r in dev), dev


def test_the_wheel_holds_tb_lazy_alone():
    """mlx_train runs from a clone (the editable install puts the clone on sys.path); a wheel
    named tb-lazy holds the watcher only. tests/base_install_check.sh builds one and checks."""
    found = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["packages"]
    assert found["find"]["include"] == ["tb_lazy*"]


def test_importing_every_tb_lazy_module_loads_no_training_module():
    """A real interpreter: the idle watcher stays light, and the base install can run it."""
    code = (
        "import importlib, pkgutil, sys, tb_lazy\n"
        "for m in pkgutil.walk_packages(tb_lazy.__path__, 'tb_lazy.'):\n"
        "    if m.name != 'tb_lazy.__main__':\n"
        "        importlib.import_module(m.name)\n"
        "print(sorted({n.split('.')[0] for n in sys.modules}))\n"
        "print(sorted(n for n in sys.modules if n.startswith('tb_lazy.')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    top, ours = (ast.literal_eval(line) for line in result.stdout.splitlines())
    loaded = set(top)
    assert "tb_lazy" in loaded and {"tb_lazy.detect.detect", "tb_lazy.state.registry"} <= set(ours)
    assert loaded.isdisjoint(TRAINING_ONLY), loaded & TRAINING_ONLY
