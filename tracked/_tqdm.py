"""The tqdm bridge: ``tracked.tqdm`` and ``tracked.capture_tqdm()``.

A bar reports where tqdm already throttles itself: when it redraws (``display``,
at most every ``mininterval``) and when it closes. The per-item path is tqdm's
own loop, unchanged, so a bridged bar costs what a plain one costs per item.

Nested bars: the outermost bar (or ``tracked.track`` loop) counting into a
progress drives its count, total and status; a bar opened while another one
drives the same progress shows itself as the status text ("Downloading:
3.20M/10.0M B") and hands the status back when it closes.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Generic, NoReturn, TypeVar, overload

try:
    import tqdm.std as _tqdm_std
except ImportError as exc:  # pragma: no cover - tqdm is in the test extra
    raise ImportError(
        "tracked.tqdm and tracked.capture_tqdm need tqdm: pip install 'tracked[tqdm]'"
    ) from exc

from ._adopt import (
    CurrentToken,
    caller_frame,
    caller_name,
    claim_driver,
    live_progress,
    make_current,
    release_driver,
    restore_current,
)
from ._api import start
from ._progress import Progress
from ._scope import StoreSpec
from ._state import DEFAULT_STATUS, validate_name
from .errors import InvalidName

__all__ = ["capture_tqdm", "tqdm"]

_T = TypeVar("_T")
logger = logging.getLogger("tracked")
std_tqdm = _tqdm_std.tqdm

if TYPE_CHECKING:
    _GenericTqdm = std_tqdm
else:

    class _GenericTqdm(std_tqdm, Generic[_T]):
        """``tqdm.std.tqdm``, subscriptable at run time as it is in its type stubs."""


class tqdm(_GenericTqdm[_T]):
    """A ``tqdm.tqdm`` that also records to a progress: ``from tracked import tqdm``.

    It takes tqdm's arguments, plus ``name`` and ``store`` for the progress. The
    bar's total and count become the progress's, its ``desc`` the status, and
    ``set_postfix``/``set_postfix_str`` texts and ``tqdm.write()`` lines messages.

    Given a ``name``, or outside a live progress, the bar starts its own progress
    (named after ``desc``, else the caller's module and qualified name), which is
    ``tracked.current()`` until the bar closes. Closing ends it: ``finished``;
    ``failed`` if the wrapped iterable raised; ``cancelled`` if a ``for`` loop
    over the bar stopped early (a ``break`` and an exception in the loop body
    look the same to the bar) or on Ctrl-C. Used as a context manager, the
    ``with`` block decides instead, as ``with tracked.start()`` does: left
    normally, ``finished``; by an exception, ``failed`` (``cancelled`` for
    Ctrl-C or a cancelled task).

    Without a ``name`` inside a live progress the bar counts into that progress
    (its total becomes the count so far plus the bar's total) and leaves ending
    it to its owner; nested in another bar or loop that counts into it, the bar
    only shows as the status text.

    Once the run is asked to stop (``tracked.cancel``) and its process has seen
    the request, the bar's next item, or next ``update()``, raises
    ``tracked.Cancelled``. The bar's ``desc`` is its status while it runs, never
    after the run ended. A bar that is never closed ends when tqdm closes it as
    it is collected: ``finished`` if it reached its total (or has none), else
    ``failed``, with an error saying where it stopped: nothing said the work was
    done.

    A disabled bar (``disable=True``) records nothing: tqdm keeps no count for
    it. For a bar that reports without drawing, pass ``file=open(os.devnull,
    "w")``.
    """

    _tracked_bridge: _Bridge | None = None

    @overload
    def __init__(
        self,
        iterable: Iterable[_T],
        *args: Any,
        name: str | None = None,
        store: StoreSpec | None = None,
        **kwargs: Any,
    ) -> None: ...

    @overload
    def __init__(
        self: tqdm[NoReturn],
        iterable: None = None,
        *args: Any,
        name: str | None = None,
        store: StoreSpec | None = None,
        **kwargs: Any,
    ) -> None: ...

    def __init__(
        self,
        iterable: Iterable[_T] | None = None,
        *args: Any,
        name: str | None = None,
        store: StoreSpec | None = None,
        **kwargs: Any,
    ) -> None:
        frame = caller_frame(1)
        super().__init__(iterable, *args, **kwargs)  # type: ignore[arg-type]
        if self.disable:
            return
        try:
            live = live_progress() if name is None else None
            if live is not None:
                bridge = _Bridge.attach(live)
            else:
                if name is None:
                    name = _name_from(self.desc)
                    if name is None:
                        name = caller_name(frame)
                bridge = _Bridge.own(self, name, store)
        except BaseException:
            std_tqdm.close(self)  # no bar left on screen for a progress that never was
            raise
        self._tracked_bridge = bridge
        bridge.sync(self)
        bridge.watch_cancel(self)

    def display(self, msg: str | None = None, pos: int | None = None) -> Any:
        shown = super().display(msg, pos)
        bridge = self._tracked_bridge
        if bridge is not None:
            bridge.sync(self)
        return shown

    def __del__(self) -> None:
        bridge = self._tracked_bridge
        if bridge is not None and not getattr(self, "disable", True):
            bridge.dropped = True  # closed by collection, not by its code
        super().__del__()

    def close(self) -> None:
        bridge = self._tracked_bridge
        try:
            super().close()
        finally:
            if bridge is not None and not bridge.managed:
                self._tracked_bridge = None
                bridge.end(self)

    def __enter__(self) -> tqdm[_T]:
        bridge = self._tracked_bridge
        if bridge is not None:
            bridge.managed = True  # the with block, not the loop, says how it ended
        return self

    def __exit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        bridge = self._tracked_bridge
        if bridge is not None:
            bridge.managed = False
            bridge.outcome = exc_value  # the block's ending, not the loop's, as start() does
        super().__exit__(exc_type, exc_value, traceback)

    def __iter__(self) -> Iterator[_T]:
        bridge = self._tracked_bridge
        if bridge is None:
            return super().__iter__()
        return self._iterate(bridge)

    def _iterate(self, bridge: _Bridge) -> Iterator[_T]:
        """tqdm's own loop (``tqdm.std.tqdm.__iter__``), which also notes how it ended.

        Copied rather than wrapped: a wrapping generator would add a frame per item.
        """
        iterable = self.iterable
        last_print_t = self.last_print_t
        last_print_n = self.last_print_n
        n = self.n
        time = self._time  # type: ignore[attr-defined]
        try:
            for obj in iterable:
                yield obj
                n += 1
                if n - last_print_n >= self.miniters:  # type: ignore[operator]
                    cur_t = time()
                    dt = cur_t - last_print_t
                    # Read from the bar (at most once per redraw interval): a cancel
                    # request zeroes them, delay too (see stop_bar).
                    if dt >= self.mininterval and cur_t >= self.start_t + (self.delay or 0):
                        self.update(n - last_print_n)
                        last_print_n = self.last_print_n
                        last_print_t = self.last_print_t
        except BaseException as exc:
            if bridge.outcome is None:
                bridge.outcome = exc
            raise
        finally:
            self.n = n
            self.close()

    @classmethod
    def write(cls, s: str, file: Any = None, end: str = "\n", nolock: bool = False) -> None:
        """Print ``s`` as tqdm does, and add it as a message to the live progress."""
        super().write(s, file=file, end=end, nolock=nolock)
        _add_message(s)


class _Bridge:
    """What one bar has told its progress, so each redraw sends only what changed."""

    __slots__ = (
        "base",
        "desc",
        "drives",
        "dropped",
        "hook",
        "lock",
        "managed",
        "n",
        "outcome",
        "owned",
        "postfix",
        "progress",
        "shown_status",
        "status_before",
        "token",
        "total",
    )

    def __init__(self, progress: Progress, *, owned: bool) -> None:
        self.progress = progress
        self.owned = owned
        self.drives = claim_driver(progress, self)
        self.base = 0 if owned or not self.drives else progress.count
        self.status_before = progress.status
        self.shown_status: str | None = None
        self.token: CurrentToken | None = None
        self.total: int | object | None = _UNSET
        self.n = 0  # the bar's count as last added to the progress
        self.desc: str | None = None
        self.postfix: object = None
        self.outcome: BaseException | None = None
        self.managed = False
        self.dropped = False  # tqdm closed the bar as it was collected
        self.hook: Callable[[], None] | None = None
        # tqdm's monitor thread may redraw a bar while its own thread does: the
        # count goes out as differences, which must not be sent twice.
        self.lock = threading.Lock()

    @classmethod
    def attach(cls, progress: Progress) -> _Bridge:
        """Report into a live progress that someone else owns and ends."""
        return cls(progress, owned=False)

    @classmethod
    def own(cls, bar: std_tqdm[Any], name: str | None, store: StoreSpec | None) -> _Bridge:
        """Start a progress of the bar's own, current until the bar closes."""
        progress = start(
            name,
            _whole(bar.total),
            count=_whole(bar.n) or 0,
            status=_name_from(bar.desc),
            store=store,
        )
        bridge = cls(progress, owned=True)
        bridge.n = progress.count
        bridge.shown_status = progress.status if _name_from(bar.desc) else None
        bridge.token = make_current(progress)
        return bridge

    def watch_cancel(self, bar: std_tqdm[Any]) -> None:
        """Have a cancel request of the run stop ``bar`` at its next item or update."""
        bar_ref = weakref.ref(bar)

        def hook() -> None:
            bar = bar_ref()
            if bar is not None:
                stop_bar(bar, self.progress)

        self.hook = hook
        self.progress.add_cancel_hook(hook)

    def sync(self, bar: std_tqdm[Any]) -> None:
        """Send what changed since the last redraw. Never raises into the bar."""
        progress = self.progress
        if not progress.in_progress:
            return
        try:
            with self.lock:
                self._send(bar, progress)
        except Exception:
            logger.debug("could not mirror a tqdm bar", exc_info=True)

    def _send(self, bar: std_tqdm[Any], progress: Progress) -> None:
        """One sync's changes, under the lock."""
        if self.drives:
            self._send_counts(bar, progress)
        else:
            text = _meter(bar)
            if text != self.shown_status:
                progress.status = self.shown_status = text
        postfix = bar.postfix
        if postfix and postfix != self.postfix:
            self.postfix = postfix
            progress.add_message(str(postfix))

    def _send_counts(self, bar: std_tqdm[Any], progress: Progress) -> None:
        """A driving bar's total, count and description, as far as they changed."""
        total = _whole(bar.total)
        if total != self.total:
            self.total = total
            if total is not None:
                progress.total = self.base + total
            elif self.owned:
                progress.total = None
        n = _whole(bar.n) or 0
        if n != self.n:
            # Add the difference rather than set the count: counts added
            # to the progress by others (a handle shared with threads)
            # stay, and it needs nothing but increment() of the handle.
            progress.increment(n - self.n)
            self.n = n
        desc = _name_from(bar.desc)
        if desc != self.desc:
            self.desc = desc
            if desc:
                progress.status = self.shown_status = desc

    def end(self, bar: std_tqdm[Any]) -> None:
        """The bar closed: a last sync, then end the progress or hand it back."""
        self.sync(bar)
        progress = self.progress
        release_driver(progress, self)
        if self.hook is not None:
            progress.remove_cancel_hook(self.hook)
            self.hook = None
        if self.owned:
            self._end_owned(bar, progress)
        elif self.shown_status is not None and progress.in_progress:
            with contextlib.suppress(Exception):
                if progress.status == self.shown_status:
                    # Give the status back; the default one by unsetting it, so a
                    # finished progress still says "finished".
                    before = None if self.status_before == DEFAULT_STATUS else self.status_before
                    progress.status = before

    def _end_owned(self, bar: std_tqdm[Any], progress: Progress) -> None:
        """End the progress this bar started, the way its block ended."""
        restore_current(self.token)
        if self.shown_status is not None and progress.status == self.shown_status:
            with contextlib.suppress(Exception):
                progress.status = None  # the desc said what it did; the end says how
        if self.outcome is None and self.dropped and _short(bar):
            progress.fail(f"the tqdm bar was collected unclosed at {_short(bar)}")
        else:
            progress.end_by(self.outcome)


_UNSET = object()


def stop_bar(bar: std_tqdm[Any], progress: Progress) -> None:
    """A cancel request was seen (on the flusher's thread): make ``bar``'s next item
    or ``update()`` raise ``tracked.Cancelled``. Nothing is added per item before:
    the bar's next update is forced (no interval, no minimum of items) and its
    ``update`` is replaced, on this one bar, by one that counts and then raises."""
    bar.dynamic_miniters = False
    bar.miniters = 0
    bar.mininterval = 0
    bar.delay = 0  # a bar still within its delay (not yet shown) stops too
    update = type(bar).update

    def update_then_stop(n: float | None = 1) -> bool | None:
        shown = update(bar, n)
        total = _whole(bar.total)
        if total is None or (_whole(bar.n) or 0) < total:  # the last item done: no stop
            progress.check()  # raises Cancelled while the run is live and asked to stop
        return shown

    bar.update = update_then_stop  # type: ignore[method-assign]
    if "_tracked_captured" in bar.__dict__:
        # tqdm's own loop keeps mininterval and delay in locals; it reads only
        # miniters from the bar at each item, so that comparison stops it.
        bar.miniters = _StopAtNextItem(bar, progress)  # type: ignore[assignment]


class _StopAtNextItem:
    """A captured bar's ``miniters`` once its run was asked to stop: tqdm's per-item
    test ``n - last_print_n >= miniters`` asks it, and it raises ``tracked.Cancelled``
    unless the bar's last item was done. tqdm's monitor thread (``miniters > 1``) gets
    False and never raises."""

    __slots__ = ("bar", "progress")

    def __init__(self, bar: std_tqdm[Any], progress: Progress) -> None:
        self.bar = weakref.ref(bar)
        self.progress = progress

    def __le__(self, unprinted: object) -> bool:
        bar = self.bar()
        total = None if bar is None else _whole(bar.total)
        if bar is not None and isinstance(unprinted, (int, float)):
            done = (_whole(bar.last_print_n) or 0) + unprinted
            if total is not None and done >= total:
                return True  # the last item done: no stop
        self.progress.check()  # raises Cancelled while the run is live and asked to stop
        return True

    def __gt__(self, other: object) -> bool:
        return False

    def __int__(self) -> int:
        return 0


def _short(bar: std_tqdm[Any]) -> str | None:
    """"10/100" for a bar below its total; None when it reached it or has none."""
    n, total = _whole(bar.n), _whole(bar.total)
    if n is None or total is None or n >= total:
        return None
    return f"{n}/{total}"


def _whole(value: object) -> int | None:
    """A bar's count or total as a progress takes it: a whole number >= 0, or None."""
    if value is None:
        return None
    try:
        whole = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError):  # inf, nan
        return None
    return whole if whole >= 0 else None


def _name_from(desc: str | None) -> str | None:
    """The bar's description without the ": " tqdm's ``set_description`` adds, or None."""
    if not desc:
        return None
    text = desc.strip().removesuffix(":").rstrip()
    if not text:
        return None
    try:
        return validate_name(text)
    except InvalidName:
        return None


def _meter(bar: std_tqdm[Any]) -> str:
    """A nested bar as one line of status: "Downloading: 3.20M/10.0M B"."""
    total = bar.total
    text = bar.format_meter(
        bar.n,
        total,  # type: ignore[arg-type]
        0,
        unit=bar.unit,
        unit_scale=bar.unit_scale,
        unit_divisor=bar.unit_divisor,
        bar_format="{n_fmt}/{total_fmt} {unit}" if total else "{n_fmt} {unit}",
    )
    desc = _name_from(bar.desc)
    return f"{desc}: {text}" if desc else text


def _add_message(text: object) -> None:
    progress = live_progress()
    if progress is not None:
        try:
            progress.add_message(str(text))
        except Exception:
            logger.debug("could not add a tqdm.write() line", exc_info=True)


# ---------------------------------------------------------------------- capture_tqdm

_capturing: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "tracked_capture_tqdm", default=False
)
_hooks_lock = threading.Lock()
_hooks_installed = False


@contextlib.contextmanager
def capture_tqdm() -> Iterator[None]:
    """Make every tqdm bar created inside the block, in a live progress, report into it.

    For code you cannot edit: a library's download bar, a helper module's
    ``from tqdm import tqdm``. Each such bar counts into the live progress
    (or, nested in a loop or bar that already counts into it, shows as its
    status text), adds its postfix texts and ``tqdm.write()`` lines as
    messages, and never ends the progress. Bars created outside a live
    progress, in other threads, or disabled, are left alone.

    It works on ``tqdm.std.tqdm``, the base class of every tqdm bar (``tqdm.auto``,
    ``tqdm.asyncio``, ...). The first use installs small hooks on it that do
    nothing outside a ``capture_tqdm()`` block; they stay installed.
    """
    _install_hooks()
    token = _capturing.set(True)
    try:
        yield
    finally:
        _capturing.reset(token)


def _install_hooks() -> None:
    global _hooks_installed
    with _hooks_lock:
        if _hooks_installed:
            return
        std_tqdm.__init__ = _after(std_tqdm.__init__, _capture)  # type: ignore[method-assign]
        std_tqdm.refresh = _after(std_tqdm.refresh, _sync_captured)  # type: ignore[method-assign]
        std_tqdm.close = _closing(std_tqdm.close)  # type: ignore[method-assign, assignment]
        std_tqdm.write = classmethod(_writing(std_tqdm.__dict__["write"].__func__))  # type: ignore[method-assign, assignment]
        _hooks_installed = True


def _after(
    original: Callable[..., Any], hook: Callable[[std_tqdm[Any]], None]
) -> Callable[..., Any]:
    @functools.wraps(original)
    def wrapper(self: std_tqdm[Any], *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        hook(self)
        return result

    return wrapper


def _capture(bar: std_tqdm[Any]) -> None:
    """After a bar's ``__init__``: inside a capture and a live progress, attach it."""
    if not _capturing.get() or bar.disable or isinstance(bar, tqdm):
        return
    progress = live_progress()
    if progress is None:
        return
    bridge = _Bridge.attach(progress)
    bar.__dict__["_tracked_captured"] = bridge
    bridge.sync(bar)
    bridge.watch_cancel(bar)


def _sync_captured(bar: std_tqdm[Any]) -> None:
    bridge = bar.__dict__.get("_tracked_captured")
    if bridge is not None:
        bridge.sync(bar)


def _closing(original: Callable[[std_tqdm[Any]], None]) -> Callable[[std_tqdm[Any]], None]:
    @functools.wraps(original)
    def close(self: std_tqdm[Any]) -> None:
        bridge = self.__dict__.pop("_tracked_captured", None)
        try:
            original(self)
        finally:
            if bridge is not None:
                bridge.end(self)

    return close


def _writing(original: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(original)
    def write(cls: type[std_tqdm[Any]], s: str, *args: Any, **kwargs: Any) -> None:
        original(cls, s, *args, **kwargs)
        if _capturing.get() and not issubclass(cls, tqdm):  # tracked.tqdm adds its own
            _add_message(s)

    return write
