"""tb_lazy: start TensorBoard only when a run actually writes TensorBoard logs.

    import tb_lazy
    with tb_lazy.autostart(logdir) as board:   # returns at once; honours TB_* variables
        train(...)                               # TensorBoard starts once training logs data
    print(board.url)                             # None if nothing was ever logged
"""

import importlib

__version__ = "0.1.0"
# Imported on first use (PEP 562): ``import tb_lazy`` stays light, and ``python -m tb_lazy``
# can say in one line what is missing from an interpreter without the project installed.
_EXPORTS = {
    "Board": "tb_lazy.autostart",
    "autostart": "tb_lazy.autostart",
    "UsageError": "tb_lazy.config",
    "Failed": "tb_lazy.launch",
    "Served": "tb_lazy.launch",
    "Instance": "tb_lazy.registry",
    "running": "tb_lazy.registry",
    "stop_serving": "tb_lazy.registry",
    "Skipped": "tb_lazy.watch",
    "watch": "tb_lazy.watch",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tb_lazy' has no attribute {name!r}")
    module = importlib.import_module(_EXPORTS[name])
    value = getattr(module, "stop" if name == "stop_serving" else name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
