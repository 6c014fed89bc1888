"""Wait until event data is written, during this run, under a folder that may not exist yet.

A watchdog observer does the waiting. While the log folder is missing we watch its
nearest existing ancestor (not recursively: that could be a home folder) and move down as
the folders on the way appear; once the log folder exists we watch it recursively — its
real location, plus the real location of every symlinked folder inside it (inotify
doesn't follow links). Each time watches are placed we scan, place them, and scan again,
so nothing written in between is missed. Which writes count is ``RunData``'s to decide.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.api import BaseObserver, ObservedWatch

from tb_lazy.detect.observe import (
    FALLBACK_POLL,
    NETWORK_FILE_SYSTEMS,
    InotifyShort,
    file_system_type,
    is_limit,
    make_observer,
    started,
    unwatched,
    warn_polling,
)
from tb_lazy.detect.rundata import RunData
from tb_lazy.messages import note

SLICE = 0.2  # seconds between checks of stop conditions while waiting
# Only the events the handler uses. Without a filter inotify also reports every folder
# opened and closed, and our own scans of a large tree overflow its queue. Modified and
# closed-after-write are how a header-only file is seen gaining its first record.
WATCHED_EVENTS = [FileCreatedEvent, FileMovedEvent, FileModifiedEvent, FileClosedEvent,
           DirCreatedEvent, DirMovedEvent, DirDeletedEvent]


def is_event_file(name: str | os.PathLike[str]) -> bool:
    """TensorBoard's own rule: the file name contains ``tfevents``."""
    return "tfevents" in os.path.basename(os.fspath(name))


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


class Tree:
    """What a scan of the log folder found: event files, real folders, and the real
    locations of symlinked folders (each a further root to watch). Links are followed
    once; a link back into a folder already covered adds nothing."""

    def __init__(self, root: str) -> None:
        self.roots = [root]
        self.files: list[str] = []
        self.folders: list[str] = []
        pending = [root]
        while pending:
            self._walk(pending.pop(), pending)

    def _walk(self, top: str, pending: list[str]) -> None:
        stack = [top]
        while stack:
            folder = stack.pop()
            self.folders.append(folder)
            try:
                with os.scandir(folder) as entries:
                    for entry in entries:
                        try:
                            if entry.is_dir(follow_symlinks=False):
                                stack.append(entry.path)
                            elif entry.is_symlink() and entry.is_dir():
                                self._link(os.path.realpath(entry.path), pending)
                            elif is_event_file(entry.name):
                                self.files.append(entry.path)
                        except OSError:
                            continue
            except OSError:  # gone, not a folder, or unreadable: nothing to find there
                continue

    def _link(self, target: str, pending: list[str]) -> None:
        covered = any(_inside(target, root) or _inside(root, target) for root in self.roots)
        if not covered:
            self.roots.append(target)
            pending.append(target)


def nearest_existing(path: Path) -> Path:
    """``path`` itself if it is a folder, else its nearest ancestor that exists."""
    while not path.is_dir() and path != path.parent:
        path = path.parent
    return path


class _Handler(FileSystemEventHandler):
    """Collects what the waiting loop acts on: event files that changed, new folders
    (to check they are watched), and changes of layout (a folder on the way to the log
    folder appeared or went, or a symlinked folder appeared)."""

    def __init__(self, wake: threading.Event) -> None:
        self._wake = wake
        self._lock = threading.Lock()
        self.target = ""  # the log folder's real path
        self.roots: list[str] = []  # folders whose event files count (empty while waiting on an ancestor)
        self.changed: set[str] = set()
        self.new_folders: list[str] = []
        self.moved_on = False

    def take(self) -> tuple[list[str], list[str]]:
        """The changed event files and new folders since the last call."""
        with self._lock:
            changed, self.changed = sorted(self.changed), set()
            folders, self.new_folders = self.new_folders, []
        return changed, folders

    def _counts(self, path: str) -> bool:
        return any(_inside(path, root) for root in self.roots)

    def _file(self, path: str) -> None:
        if _inside(self.target, path):  # a link (or a file) on the way to the log folder: it may lead elsewhere now
            self.moved_on = True
            self._wake.set()
        if not self._counts(path):
            return
        if is_event_file(path):
            with self._lock:
                self.changed.add(path)
            self._wake.set()
        elif os.path.islink(path) and os.path.isdir(path):  # a symlinked folder: watch where it points
            self.moved_on = True
            self._wake.set()

    def _folder(self, path: str) -> None:
        if self._counts(path):
            with self._lock:
                self.new_folders.append(path)
            self._wake.set()
        if _inside(self.target, path.rstrip(os.sep)):  # on the way to the log folder, or the folder itself
            self.moved_on = True
            self._wake.set()

    def _seen(self, path: str | bytes, is_directory: bool) -> None:
        path = os.fsdecode(path)
        self._folder(path) if is_directory else self._file(path)

    def on_created(self, event: FileSystemEvent) -> None:
        self._seen(event.src_path, event.is_directory)

    def on_moved(self, event: FileSystemEvent) -> None:
        self._seen(event.dest_path, event.is_directory)

    def on_modified(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self._file(os.fsdecode(event.src_path))

    def on_closed(self, event: FileSystemEvent) -> None:
        self._file(os.fsdecode(event.src_path))

    def on_deleted(self, event: FileSystemEvent) -> None:
        if _inside(self.target, os.fsdecode(event.src_path)):
            self.moved_on = True
            self._wake.set()


def wait_for_new_data(
    logdir: Path,
    *,
    since: float | None,
    poll: float | None = None,
    timeout: float | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    observer_factory: Callable[[float | None], BaseObserver] = make_observer,
    on_ready: Callable[[], None] | None = None,
) -> Path | None:
    """Block until an event file under ``logdir`` holds data written since ``since``
    (a time.time() value; None: any data counts); return that file.

    Returns None when ``timeout`` seconds pass or ``should_stop()`` turns true first
    (checked several times a second; a last scan then catches data the events didn't
    bring yet). Polls once a second instead of using inotify on a network file system,
    or when inotify can't watch every folder (instance or watch limit reached).

    ``on_ready`` is called once, when the first watches are placed and the scan after them
    is done: from then on, any data written is seen (what tests wait for instead of sleeping).
    """
    if poll is None and (kind := file_system_type(nearest_existing(logdir))) in NETWORK_FILE_SYSTEMS:
        note(f"{logdir} is on {kind}, where inotify misses other machines' writes; polling every {FALLBACK_POLL:g}s")
        poll = FALLBACK_POLL
    waiter = _Waiter(logdir, RunData(since), timeout, should_stop, on_ready)
    observer = started(observer_factory, poll, logdir)
    found: Path | None = None
    ended = False
    try:
        while True:
            try:
                found = waiter.once(observer)
            except InotifyShort as short:  # only inotify runs short: from now on, poll
                warn_polling(short.where, short.reason)
                _dispose(observer)
                observer = started(observer_factory, FALLBACK_POLL, logdir)
                continue
            if found is not _MOVED_ON:
                ended = True
                return found
    finally:
        if ended and found is None:
            _dispose(observer)
        else:  # removing thousands of watches takes a while: don't hold up the launch for it, nor
            # the exit after an exception (Ctrl-C): watchdog's stop joins its threads without a limit
            threading.Thread(target=_dispose, args=(observer,), name="tb_lazy-observer-stop", daemon=True).start()


def _dispose(observer: BaseObserver) -> None:
    observer.stop()
    observer.join(timeout=5)


_MOVED_ON = Path("moved on")  # sentinel: the layout changed, place the watches again


class _Waiter:
    """One wait, across the layouts it goes through (folders appearing, links added)."""

    def __init__(self, logdir: Path, run: RunData, timeout: float | None, should_stop: Callable[[], bool],
                 on_ready: Callable[[], None] | None = None) -> None:
        self.logdir = logdir
        self.on_ready = on_ready
        self.run = run
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.should_stop = should_stop
        self.wake = threading.Event()
        self.handler = _Handler(self.wake)

    def once(self, observer: BaseObserver) -> Path | None:
        """Place the watches for the current layout and wait on them until data is found
        (its path), time is up or the run ended (None), or the layout changed (_MOVED_ON)."""
        anchor = nearest_existing(self.logdir)
        tree = Tree(os.path.realpath(self.logdir)) if anchor == self.logdir else None
        if tree and (found := _first_new(self.run, tree.files)):
            return found
        self.handler.target = os.path.realpath(self.logdir)
        self.handler.roots = tree.roots if tree else []
        self.handler.moved_on = False
        self.handler.take()
        watches = _schedule(observer, self.handler, tree, os.path.realpath(anchor))
        outcome = None
        try:
            outcome = self._wait(observer, watches, tree, anchor)
            return outcome
        finally:
            if outcome is _MOVED_ON:  # otherwise (found, none, or an exception) the whole observer is stopped next
                for watch in watches:
                    observer.unschedule(watch)

    def _wait(
        self, observer: BaseObserver, watches: list[ObservedWatch], tree: Tree | None, anchor: Path
    ) -> Path | None:
        suspects: dict[str, float] = {}  # folders not yet seen watched -> since when
        if tree:
            again = Tree(tree.roots[0])
            if again.roots != tree.roots:
                return _MOVED_ON  # a symlinked folder appeared meanwhile
            _suspect(suspects, again.folders)
            _check_watched(observer, watches, suspects)
            if found := _first_new(self.run, again.files):
                return found
        elif nearest_existing(self.logdir) != anchor:
            return _MOVED_ON
        if self.on_ready is not None:  # watches placed, second scan done: nothing written from now on is missed
            self.on_ready()
            self.on_ready = None
        next_check = 0.0
        while True:
            changed, folders = self.handler.take()
            if found := _first_new(self.run, changed):
                return found
            if tree:
                _suspect(suspects, folders)
            now = time.monotonic()
            if suspects and now >= next_check and now - min(suspects.values()) >= WATCH_CHECK_DELAY:
                _check_watched(observer, watches, suspects)
                next_check = now + WATCH_CHECK_DELAY
            if self.handler.moved_on or self._relinked(anchor):
                return _MOVED_ON
            if self.should_stop():  # one last look: a run that logged just before ending still counts
                return _first_new(self.run, Tree(self.handler.target).files) if self.logdir.is_dir() else None
            remaining = SLICE if self.deadline is None else min(SLICE, self.deadline - time.monotonic())
            if remaining <= 0:
                return None
            self.wake.wait(remaining)
            self.wake.clear()


    def _relinked(self, anchor: Path) -> bool:
        """True if the log folder now leads somewhere else: a symlink on the way to it was
        created, replaced or re-pointed (inotify reports nothing about the link's target),
        or the nearest existing folder on the way changed (appeared, went, became a file)."""
        return os.path.realpath(self.logdir) != self.handler.target or nearest_existing(self.logdir) != anchor

def _first_new(run: RunData, paths: list[str]) -> Path | None:
    return next((Path(path) for path in paths if run.check(path)), None)


def _schedule(observer: BaseObserver, handler: _Handler, tree: Tree | None, anchor: str) -> list[ObservedWatch]:
    """Watch every root of ``tree`` recursively, or only ``anchor`` while the log folder is missing."""
    watches: list[ObservedWatch] = []
    try:
        for root in tree.roots if tree else [anchor]:
            watches.append(observer.schedule(handler, root, recursive=tree is not None, event_filter=WATCHED_EVENTS))
    except OSError as error:
        for watch in watches:
            observer.unschedule(watch)
        if is_limit(error) and not _is_polling(observer):
            raise InotifyShort(root, error.strerror or str(error)) from None
        raise
    return watches


WATCH_GRACE = 2.0  # seconds a folder may stay unwatched before it counts as missed (the watch limit)
# Reading the kernel's watch list costs tens of milliseconds with 10,000 watches: new folders wait
# this long before it is read (and it is read at most this often), so that an event file made in a
# new folder is seen first, not after the read.
WATCH_CHECK_DELAY = 0.25


def _suspect(suspects: dict[str, float], folders: list[str]) -> None:
    """Note ``folders`` as not yet seen watched, from now (a folder already noted keeps its time)."""
    now = time.monotonic()
    for folder in folders:
        suspects.setdefault(folder, now)


def _check_watched(observer: BaseObserver, watches: list[ObservedWatch], suspects: dict[str, float]) -> None:
    """Drop the ``suspects`` inotify now watches (or that are gone); raise InotifyShort if one
    stays unwatched (watch limit reached). We may hear of a new folder — from our scan, or from
    watchdog's made-up events for a tree created at once — before watchdog has handled its
    creation, which is when it watches it: a folder counts as missed only after ``WATCH_GRACE``
    seconds."""
    now = time.monotonic()
    for watch in watches:
        mine = [folder for folder in suspects if _inside(folder, watch.path)]
        missed = unwatched(observer, watch, mine)
        for folder in mine if missed is None else mine[: mine.index(missed)]:  # watched, or gone
            del suspects[folder]
        if missed is not None and now - suspects[missed] >= WATCH_GRACE:
            raise InotifyShort(missed, "inotify watch limit reached")


def _is_polling(observer: BaseObserver) -> bool:
    from watchdog.observers.polling import PollingObserver

    return isinstance(observer, PollingObserver)
