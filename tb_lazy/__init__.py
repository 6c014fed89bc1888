"""tb_lazy: start TensorBoard only when a run actually writes TensorBoard logs.

    import tb_lazy
    with tb_lazy.autostart(logdir) as board:   # returns at once; honours TB_* variables
        train(...)                               # TensorBoard starts once training logs data
    print(board.url)                             # None if nothing was ever logged
"""

from tb_lazy.autostart import Board, autostart
from tb_lazy.config import UsageError
from tb_lazy.launch import Failed, Served
from tb_lazy.registry import Instance, running
from tb_lazy.registry import stop as stop_serving
from tb_lazy.watch import Skipped, watch

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
__version__ = "0.1.0"
