"""``watch``: wait for event data written during this run, then reuse or start TensorBoard.

The library function behind ``python -m tb_lazy watch DIR``. Expected outcomes come
back as values: ``Served`` (started or reused), ``Skipped`` (nothing to do, with the
reason) or ``Failed`` (TensorBoard would not start). Bad input raises ``UsageError``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
from collections.abc import Callable

from tb_lazy.config import Settings, UsageError, auto_enabled, is_public_host, other_rank, resolve
from tb_lazy.detect.detect import SLICE, wait_for_new_data
from tb_lazy.hint import while_waiting
from tb_lazy.launch import (
    PORT_TRIES,
    START_TIMEOUT,
    Failed,
    Served,
    install_hint,
    port_is_free,
    start_tensorboard,
    tensorboard_command,
)
from tb_lazy.messages import note, warn
from tb_lazy.process import Identity, identify, pid_alive, start_wall_time
from tb_lazy.state import registry
from tb_lazy.state.watchers import mark_ready


@dataclasses.dataclass(frozen=True)
class Skipped:
    """Nothing was started, for ``reason``; ``warning`` if the user should act on it."""

    reason: str
    warning: bool = False


Outcome = Served | Skipped | Failed


def watch(
    logdir: str | os.PathLike[str],
    *,
    host: str | None = None,
    port: int | str | None = None,
    keep: bool | None = None,
    poll: float | str | None = None,
    timeout: float | str | None = None,
    exit_with: int | str | None = None,
    existing: bool = False,
    stop: threading.Event | None = None,
    on_served: Callable[[Served], None] | None = None,
    began: float | None = None,
) -> Outcome:
    """Wait until event data is written under ``logdir`` during this run, then serve it
    with TensorBoard.

    The run began at ``began`` (seconds since the epoch; default: when this call did), or
    when process ``exit_with`` started if that was earlier: event files left by earlier runs,
    and header-only files of writers that never logged, don't count (``existing=True``:
    data already there counts too). The command line passes its own process's start. Options left as None come from
    ``TB_HOST``/``TB_PORT``/``TB_KEEP``/``TB_AUTO``. The wait ends early when ``exit_with``
    ends or ``stop`` is set. ``on_served`` is called once TensorBoard answers HTTP. Without
    ``keep``, a TensorBoard we started is stopped when ``exit_with`` ends or ``stop`` is
    set, and this call blocks until then.
    """
    began = time.time() if began is None else began
    if not auto_enabled():
        return Skipped("TensorBoard auto-start is off (TB_AUTO=0)")
    settings = resolve(
        logdir, host=host, port=port, keep=keep, poll=poll, timeout=timeout, exit_with=exit_with, existing=existing
    )
    stop = stop or threading.Event()
    if rank := other_rank():
        return Skipped(f"not rank 0 ({rank}): only rank 0 starts TensorBoard")
    if tensorboard_command() is None:
        return Skipped(f"TensorBoard is not installed; to get curves: {install_hint()}", warning=True)
    try:
        port_is_free(settings.host, settings.port)
    except OSError as error:
        raise UsageError(f"TB_HOST/--host {settings.host!r} can't be listened on: {error.strerror or error}") from None
    def ended() -> bool:
        return stop.is_set() or (settings.exit_with is not None and not pid_alive(settings.exit_with))

    with contextlib.ExitStack() as stack:
        try:
            since = stack.enter_context(registry.watching(settings.logdir))
        except OSError as error:
            state = registry.state_dir()
            raise UsageError(f"tb_lazy's state folder {state} can't be used: {error.strerror or error}") from None
        run_began = _run_start(settings, began)
        with while_waiting(settings.logdir, since=run_began):  # the "writer buffers" hint
            found = wait_for_new_data(
                settings.logdir, since=run_began, poll=settings.poll, timeout=settings.timeout,
                should_stop=ended, on_ready=mark_ready,
            )
        if found is None:
            return Skipped(_why_not(settings, stop))
        if not settings.keep and ended():  # it would be stopped again at once
            return Skipped(f"the run ended as it wrote {found}; TB_KEEP=0, so nothing started")
        outcome = _reuse_or_launch(settings, since)
    if isinstance(outcome, Served):
        owned = not outcome.reused and not settings.keep
        try:
            if on_served:
                on_served(outcome)
            if owned:
                _wait_then_stop(outcome.pid, ended)
        except BaseException:
            if owned:
                _stop_ours(outcome.pid)
            raise
    return outcome


def _run_start(settings: Settings, began: float) -> float | None:
    """When this run began: the start of process ``exit_with`` (so a watcher spawned a
    moment after the run misses nothing), else ``began``; None with ``existing``."""
    if settings.existing:
        return None
    if settings.exit_with is not None and (start := start_wall_time(settings.exit_with)) is not None:
        return min(began, start)
    return began  # (an exit_with already gone: the wait ends at once, after one last look)


def _why_not(settings: Settings, stop: threading.Event) -> str:
    where = settings.logdir
    if settings.exit_with is not None and not pid_alive(settings.exit_with):
        return f"process {settings.exit_with} ended before it wrote any event data under {where}; nothing started"
    if stop.is_set():
        return f"stopped before any event data was written under {where}; nothing started"
    return f"no event data written under {where} within {settings.timeout:g}s; nothing started"


def _reuse_or_launch(settings: Settings, since: int) -> Served | Failed:
    """A live TensorBoard serving the folder, or a new one, decided under the launch lock.

    While another watcher covers our folder (watches a parent, or the same folder since
    before us), it starts TensorBoard for both of us and owns it; we wait for that and
    reuse it, launching ourselves only if it doesn't come within the start timeout.
    """
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        with registry.launch_lock(timeout=START_TIMEOUT * PORT_TRIES + 30):
            instance = registry.find_serving(settings.logdir)
            if instance is not None:
                return Served(
                    url=instance.url,
                    host=instance.host,
                    port=instance.port,
                    pid=instance.pid,
                    logdir=instance.logdir,
                    reused=True,
                    log_file=instance.log_file,
                    local_url=instance.local_url,
                )
            if time.monotonic() > deadline or registry.covering_watch(settings.logdir, since=since) is None:
                return _launch(settings)
        time.sleep(SLICE / 2)


def _launch(settings: Settings) -> Served | Failed:
    """Start TensorBoard for ``settings`` and record it (the caller holds the launch lock).

    The record is written as soon as the process exists, before it serves: whatever
    happens to this watcher afterwards, ``tb-lazy stop`` can stop it. Without keep, the
    record names this watcher as its owner, so the next tb_lazy command stops a
    TensorBoard whose watcher vanished.
    """
    if is_public_host(settings.host):  # said by the watcher that launches, so once per TensorBoard
        warn(f"TensorBoard has no authentication: on {settings.host} anyone who can reach this machine can read it")
    log_file = registry.new_log_file()
    owner = None if settings.keep else identify(os.getpid())
    started = time.time()

    def record(identity: Identity, port: int) -> None:
        registry.add(
            registry.Instance(
                pid=identity.pid,
                host=settings.host,
                port=port,
                logdir=os.fspath(settings.logdir),
                started=started,
                log_file=str(log_file),
                create_time=identity.create_time,
                cmdline=identity.cmdline,
                keep=settings.keep,
                owner=owner,
                boot_start=identity.boot_start,
                boot_id=identity.boot_id,
            )
        )

    outcome = start_tensorboard(
        settings.logdir, host=settings.host, port=settings.port, log_file=log_file, on_spawn=record,
        on_drop=registry.remove,
    )
    if isinstance(outcome, Served) and outcome.port != settings.port:
        note(f"port {settings.port} is taken; TensorBoard serves on port {outcome.port}")
    return outcome


def _wait_then_stop(pid: int, ended: Callable[[], bool]) -> None:
    """Without keep: hold on until the run ends (or TensorBoard dies), then stop it."""
    while not ended() and pid_alive(pid):
        time.sleep(SLICE)
    _stop_ours(pid)


def _stop_ours(pid: int) -> None:
    """Stop the TensorBoard we recorded as ``pid``, if it is still that very process."""
    registry.stop_recorded(pid)
