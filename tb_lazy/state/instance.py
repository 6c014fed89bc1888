"""``Instance``: a running TensorBoard as tb_lazy knows it, from a record of ours or from
TensorBoard's own info file."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from tb_lazy.address import local_url_for, url_for
from tb_lazy.process import Identity


@dataclasses.dataclass(frozen=True)
class Instance:
    """A running TensorBoard as the registry knows it.

    Records of ours carry the identity of the process tb_lazy started (``create_time``
    and the exact ``cmdline``); with ``keep`` off they also name their ``owner``, the
    watcher that is to stop it.
    """

    pid: int
    host: str
    port: int
    logdir: str
    started: float
    log_file: str | None = None
    source: str = "tb_lazy"  # or "tensorboard": found through TensorBoard's own info file
    create_time: float = 0.0
    cmdline: tuple[str, ...] = ()
    keep: bool = True
    owner: Identity | None = None
    path_prefix: str = ""  # TensorBoard's --path_prefix: its pages live under this path
    folders: tuple[str, ...] = ()  # the folders a --logdir_spec names; empty: just ``logdir``
    boot_start: float | None = None  # its start in seconds since boot, which no clock step moves (Linux)
    boot_id: str | None = None  # ... of this boot

    @property
    def url(self) -> str:
        return url_for(self.host, self.port) + self.path_prefix

    @property
    def local_url(self) -> str | None:
        local = local_url_for(self.host, self.port)
        return None if local is None else local + self.path_prefix

    @property
    def identity(self) -> Identity:
        return Identity(pid=self.pid, create_time=self.create_time, cmdline=self.cmdline, boot_start=self.boot_start,
                        boot_id=self.boot_id)

    def serves(self, logdir: Path) -> bool:
        """True when one of this instance's log folders is ``logdir`` or one of its ancestors."""
        logdir = Path(os.path.realpath(logdir))
        for folder in self.folders or (self.logdir,):
            mine = Path(os.path.realpath(folder))
            if logdir == mine or mine in logdir.parents:
                return True
        return False

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["cmdline"] = list(self.cmdline)
        data["folders"] = list(self.folders)
        data["owner"] = None if self.owner is None else self.owner.to_json()
        return data
