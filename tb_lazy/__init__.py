"""tb_lazy: start TensorBoard only when a run actually writes TensorBoard logs.

    import tb_lazy
    with tb_lazy.autostart(logdir) as board:   # returns at once; honours TB_* variables
        train(...)                               # TensorBoard starts once training logs data
    print(board.url)                             # None if nothing was ever logged
"""

__version__ = "0.1.0"
__all__ = [
    "Board",
    "Failed",
    "Instance",
    "Served",
    "Skipped",
    "UsageError",
    "autostart",
    "running",
    "stop_serving",
    "watch",
]

try:
    from tb_lazy.autostart import Board, autostart
    from tb_lazy.config import UsageError
    from tb_lazy.launch import Failed, Served
    from tb_lazy.state.registry import Instance, running
    from tb_lazy.state.registry import stop as stop_serving
    from tb_lazy.watch import Skipped, watch
except ModuleNotFoundError as _missing:
    # An interpreter without the project's dependencies: ``import tb_lazy`` still works, so
    # ``python -m tb_lazy`` can say what is missing in one line; using the library raises.
    _MISSING: ModuleNotFoundError | None = _missing

    def __getattr__(name: str):
        if name in __all__ and _MISSING is not None:
            raise ModuleNotFoundError(f"tb_lazy needs {_MISSING.name!r}, which this interpreter lacks",
                                      name=_MISSING.name)
        raise AttributeError(f"module 'tb_lazy' has no attribute {name!r}")


def load_ipython_extension(ipython: object) -> None:
    """``%load_ext tb_lazy``: registers the ``%tb_lazy`` magic (see ``tb_lazy.notebook``)."""
    from tb_lazy.notebook import register

    register(ipython)
