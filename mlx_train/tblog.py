"""TensorBoard logging with tensorboardX, created lazily.

tensorboardX creates the event file when a SummaryWriter is constructed, so the writer is
built at the first log step: a run that fails before logging leaves no event file at all.
(tb_lazy starts TensorBoard only once a file gains data, so a header-only file would start
nothing either.) ``flush()`` right after ``add_scalar`` can run before tensorboardX's writer
thread has taken the scalar; with ``flush_secs=1`` that thread flushes it within a second, so
the first scalars reach the disk — and TensorBoard comes up — without waiting for the next log step.

tensorboardX names event files ``events.out.tfevents.<unix seconds>.<hostname>``, so two writers
started in the same second in one folder would write one file and lose a run's scalars. Ours
adds ``.<pid>.<random hex>`` (`event_file_suffix`): every writer has a file of its own. (Two runs
in one folder still show as one TensorBoard run, mixed; give each run its own folder.)

`TBLogger.describe` adds the run's configuration: as text (tag ``config``) and in the HPARAMS tab.
The hparams summaries go into the run's own event file, not into the separate sub-run that
tensorboardX's ``add_hparams`` writes: TensorBoard takes a session's metric values from the scalars
of the run that holds its session-start record, so the HPARAMS table shows this run with the last
value of each of its scalars. No experiment record is written: TensorBoard then works the columns
out from all runs' session records and puts first — and ticks, five of them — the ones whose values
differ between the runs (an explicit record would tick the first five alphabetically). Where the
outputs go (``out_dir``, ``tensorboard_dir``) is in the config text, not a column: it differs per
stage and says nothing the run name and task don't. None is written as "", so every run has every column.
There is no "aborted" status: a run ended by an error or Ctrl-C is marked failed."""

from __future__ import annotations

import json
import os
import secrets
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["HParam", "NOT_HPARAMS", "TBLogger", "autostart_tensorboard", "event_file_suffix", "flatten"]

HParam = str | int | float | bool
NOT_HPARAMS = ("out_dir", "tensorboard_dir")     # in the config text only (see above)


def event_file_suffix() -> str:
    """``.<pid>.<8 random hex>``: appended to the event file's name, unique per writer."""
    return f".{os.getpid()}.{secrets.token_hex(4)}"


def flatten(config: Mapping[str, Any], *, prefix: str = "") -> dict[str, HParam]:
    """``config`` as HPARAMS values: nested mappings become ``outer.inner`` keys, None becomes ""
    (every run then has every column), lists and tuples JSON, anything else not a number, bool or
    string its ``str()``."""
    flat: dict[str, HParam] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, prefix=f"{name}."))
        elif value is None:
            flat[name] = ""
        elif isinstance(value, (str, int, float, bool)):
            flat[name] = value
        elif isinstance(value, (list, tuple)):
            flat[name] = json.dumps(value, ensure_ascii=False)
        else:
            flat[name] = str(value)
    return flat


class TBLogger:
    """Scalars, text and the run's configuration into ``logdir`` (nothing at all when ``logdir``
    is None)."""

    def __init__(self, logdir: str | Path | None):
        self.logdir = None if logdir is None else Path(logdir)
        self._writer: Any = None
        self._description: dict[str, Any] | None = None
        self._session_open = False
        self._last_step = 0

    def describe(self, config: Mapping[str, Any]) -> None:
        """The run's configuration: written with the first log step as text (tag ``config``, a JSON
        block) and as HPARAMS (``flatten(config)`` less `NOT_HPARAMS`); TensorBoard compares the
        runs by the last value of each of their scalars."""
        self._description = dict(config)

    def _get(self, step: int) -> Any:
        if self._writer is None and self.logdir is not None:
            from tensorboardX import SummaryWriter
            self._writer = SummaryWriter(logdir=str(self.logdir), flush_secs=1,
                                         filename_suffix=event_file_suffix())
            if self._description is not None:
                self._write_description(step)
        self._last_step = max(self._last_step, step)
        return self._writer

    def _write_description(self, step: int) -> None:
        from tensorboardX.summary import hparams

        config = self._description
        text = json.dumps(config, indent=2, ensure_ascii=False, default=str)
        self._writer.add_text("config", f"```json\n{text}\n```", step)     # verbatim in markdown
        columns = flatten({k: v for k, v in config.items() if k not in NOT_HPARAMS})
        _, session_start, _ = hparams(columns, {})      # no experiment record: see the module docstring
        self._writer._get_file_writer().add_summary(session_start, step)
        self._session_open = True

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """Log ``values`` (tag -> number) at ``step`` and flush."""
        writer = self._get(step)
        if writer is None:
            return
        for tag, value in values.items():
            writer.add_scalar(tag, value, step)
        writer.flush()

    def text(self, tag: str, text: str, step: int) -> None:
        """Log a text sample at ``step``."""
        writer = self._get(step)
        if writer is not None:
            writer.add_text(tag, text, step)
            writer.flush()

    def close(self, *, status: str = "STATUS_SUCCESS") -> None:
        """End the HPARAMS session with ``status`` (an hparams ``Status`` name), flush and close
        the writer; safe to call twice."""
        if self._writer is not None:
            if self._session_open:
                self._writer._get_file_writer().add_summary(_session_end(status), self._last_step)
                self._session_open = False
            self._writer.close()
            self._writer = None

    def __enter__(self) -> "TBLogger":
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        # an error or Ctrl-C: failed (the hparams plugin has no "aborted"; HPARAMS filters by status)
        self.close(status="STATUS_SUCCESS" if kind is None else "STATUS_FAILURE")


def _session_end(status: str) -> Any:
    """The hparams session-end summary with ``status`` (tensorboardX's ``hparams`` only writes
    success)."""
    from tensorboardX.proto.api_pb2 import Status
    from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData, SessionEndInfo
    from tensorboardX.proto.summary_pb2 import Summary, SummaryMetadata

    content = HParamsPluginData(session_end_info=SessionEndInfo(status=Status.Value(status)), version=0)
    metadata = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(
        plugin_name="hparams", content=content.SerializeToString()))
    return Summary(value=[Summary.Value(tag="_hparams_/session_end_info", metadata=metadata)])


def autostart_tensorboard(logdir: str | Path | None) -> Any:
    """``tb_lazy.autostart(logdir)`` when logging and TB_AUTO is not "0"; else None.

    Returns the handle (stop it at the end). Without tb_lazy installed, nothing happens and
    nothing is printed.
    """
    if logdir is None:  # (TB_AUTO and the rank guard are tb_lazy.autostart's to honour)
        return None
    try:
        import tb_lazy
        autostart = tb_lazy.autostart
    except (ImportError, AttributeError):
        return None
    try:
        return autostart(os.fspath(logdir))
    except Exception as e:  # TensorBoard is a convenience: never let it stop training
        print(f"[warn] TensorBoard auto-start failed: {e}", file=sys.stderr)
        return None
