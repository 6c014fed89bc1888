"""Use an optimized BLAS on Linux CPU.

The ``mlx[cpu]`` wheel calls a slow reference BLAS (~7.5 GFLOP/s); preloading the system
OpenBLAS makes MLX's matmuls use it instead (a tiny training step ran ~14x faster, same loss).
``LD_PRELOAD`` only takes effect at process start, so the command-line entry points re-exec
the interpreter once with it set. ``MLX_TRAIN_BLAS`` chooses: ``auto`` (default: OpenBLAS if
found), ``reference`` (never preload), or a path to a BLAS library to preload. Nothing is done
on macOS, where MLX uses Accelerate.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

__all__ = ["CANDIDATES", "ENV_CHOICE", "blas_note", "find_openblas", "loaded_blas", "reexec_with_fast_blas"]

ENV_CHOICE = "MLX_TRAIN_BLAS"
_ENV_DONE = "MLX_TRAIN_BLAS_REEXEC"          # set in the re-exec'd child: never loop
_ENV_ORIG = "MLX_TRAIN_BLAS_ORIG_PRELOAD"    # the user's own LD_PRELOAD, restored for children
CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
    "/usr/lib64/libopenblasp.so.0",
    "/usr/lib/libopenblas.so.0",
)
INSTALL_HINT = "apt-get install libopenblas0-pthread"


def find_openblas(env: Mapping[str, str] | None = None) -> str | None:
    """The BLAS library to preload per ``MLX_TRAIN_BLAS``, or None (reference BLAS)."""
    env = os.environ if env is None else env
    choice = env.get(ENV_CHOICE, "auto").strip() or "auto"
    if choice == "reference":
        return None
    if choice not in ("auto", "openblas"):
        return choice if os.path.isfile(choice) else None
    return next((path for path in CANDIDATES if os.path.isfile(path)), None)


def loaded_blas() -> str | None:
    """Path of a preloadable OpenBLAS mapped into this process (Linux), else None.

    NumPy's bundled ``libscipy_openblas`` exports only prefixed symbols that MLX never calls,
    so it does not count."""
    wanted = {os.path.realpath(p) for p in CANDIDATES if os.path.exists(p)}
    choice = os.environ.get(ENV_CHOICE, "")
    if os.path.isfile(choice):
        wanted.add(os.path.realpath(choice))
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                if "/" not in line:
                    continue
                path = line[line.index("/"):].strip()
                name = os.path.basename(path)
                if path in wanted or (name.startswith("libopenblas") and "scipy" not in name):
                    return path
    except OSError:
        pass
    return None


def reexec_with_fast_blas(command: Sequence[str]) -> None:
    """Re-exec ``python *command`` (e.g. ``["-m", "mlx_train.train", *argv]``) with an optimized
    BLAS preloaded, once. Returns when no re-exec is needed. Silent: the caller says which BLAS
    is used (``blas_note()``) once it computes, so a bad-input run stays one error line."""
    if not sys.platform.startswith("linux"):
        return
    env = os.environ
    if _ENV_DONE not in env:
        lib = find_openblas()
        if lib is not None and lib not in env.get("LD_PRELOAD", "") and loaded_blas() is None:
            child = dict(env)
            child[_ENV_DONE] = lib
            child[_ENV_ORIG] = env.get("LD_PRELOAD", "")
            child["LD_PRELOAD"] = f"{lib} {child[_ENV_ORIG]}".strip()
            sys.stdout.flush()
            sys.stderr.flush()
            try:
                os.execve(sys.executable, [sys.executable, *command], child)
            except OSError as e:
                print(f"[warn] could not re-exec with {lib} preloaded: {e}", file=sys.stderr)
    else:  # in the re-exec'd child: give our own children the user's environment back
        original = env.pop(_ENV_ORIG, "")
        env.pop(_ENV_DONE)
        if original:
            env["LD_PRELOAD"] = original
        else:
            env.pop("LD_PRELOAD", None)


def blas_note() -> str | None:
    """``[blas] …``: which BLAS MLX's CPU matmuls use here (None off Linux: macOS uses Accelerate)."""
    if not sys.platform.startswith("linux"):
        return None
    lib = loaded_blas()
    if lib is not None:
        return f"[blas] OpenBLAS {lib} ({ENV_CHOICE}=reference to use mlx's reference BLAS)"
    if os.environ.get(ENV_CHOICE, "").strip() == "reference":
        return f"[blas] mlx's reference BLAS ({ENV_CHOICE}=reference)"
    return ("[blas] mlx's reference BLAS (slow on CPU); for ~10x faster training: "
            f"{INSTALL_HINT}")
