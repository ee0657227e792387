"""The ``tracked`` command: list, show, watch, cancel, prune and serve the progresses of a store.

Every command reads through the public API only, so it agrees with the status
route on what is running and what is ``abandoned``. Bad input is one line on
stderr and exit status 2; ``rich`` (the ``tracked[cli]`` extra) is imported
only to draw ``watch``'s live bar on a terminal.

Stored text is shown, never obeyed: text output escapes every character that
could drive a terminal or reorder what is shown, and ``--json`` output writes
the same characters as ``\\u`` escapes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO

from . import State, Store, TrackedError, cancel, default_store, open_store
from ._serve import ListenError, address_family, build_app, host_port, listen
from ._state import make_key, split_key
from ._views import (
    LABEL_SEPARATOR,
    children_lines,
    children_text,
    display_key,
    ended_how,
    fraction,
    json_line,
    label,
    make_view,
    never_started,
    printable,
    rate,
    recent,
    span,
    state_text,
)

__all__ = ["main", "parse_duration"]

#: How many of the last messages ``show`` prints.
SHOW_MESSAGES = 10
EXIT_OK, EXIT_ENDED_BADLY, EXIT_USAGE = 0, 1, 2
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"(-?)(\d+(?:\.\d+)?)([smhdw])")
#: Longest ``watch --interval``: polling less often than hourly is not watching.
MAX_INTERVAL = 3600.0
#: Options that take a value: their value may start with ``-`` (``--older-than -5d``).
_VALUE_OPTIONS = frozenset(
    {"--store", "--progress-id", "--wait", "--interval", "--older-than", "--host", "--port"}
)
_FLAGS = frozenset({"--all", "--json", "--help", "-h", "--version", "--"})


class UsageError(Exception):
    """Bad input on the command line: reported as one line and exit status 2."""


class _Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line, not the usage block."""

    def error(self, message: str) -> NoReturn:
        _fail(f"{self.prog}: {message} (see {self.prog} --help)")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``tracked`` command with ``argv`` (default ``sys.argv[1:]``); return its status."""
    _never_fail_to_print()
    words = list(sys.argv[1:] if argv is None else argv)
    args = _build_parser().parse_args(_attach_dash_values(words))
    try:
        return int(args.run(args))
    except BrokenPipeError:
        # The reader went away (``tracked list | head``): stop quietly, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ENDED_BADLY
    except (UsageError, ListenError, TrackedError, OSError) as exc:
        _fail(f"tracked {args.command}: {exc}")
    except ModuleNotFoundError as exc:
        _fail(f"tracked {args.command}: {exc.name} is not installed ({_extra_for(exc.name)})")
    except KeyboardInterrupt:
        return 130


def _fail(line: str) -> NoReturn:
    print(printable(line), file=sys.stderr)
    raise SystemExit(EXIT_USAGE)


def _never_fail_to_print() -> None:
    """Text the terminal's encoding cannot show is written as backslash escapes,
    rather than ending the command with a UnicodeEncodeError."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def _attach_dash_values(words: list[str]) -> list[str]:
    """``--opt -value`` as ``--opt=-value``: argparse would take ``-5d`` for an option
    and answer "expected one argument", where the user needs to hear what is wrong
    with ``-5d`` itself. A known option or flag after ``--opt`` is left alone."""
    joined: list[str] = []
    index = 0
    while index < len(words):
        word = words[index]
        following = words[index + 1] if index + 1 < len(words) else None
        if (
            word in _VALUE_OPTIONS
            and following is not None
            and following.startswith("-")
            and following not in _VALUE_OPTIONS | _FLAGS
        ):
            joined.append(f"{word}={following}")
            index += 2
            continue
        if word == "--":
            return joined + words[index:]
        joined.append(word)
        index += 1
    return joined


def _extra_for(module: str | None) -> str:
    extra = {"redis": "redis", "rich": "cli"}.get((module or "").split(".")[0])
    return f"pip install 'tracked[{extra}]'" if extra else "see the installation docs"


# ----------------------------------------------------------------------------- parsing


def _build_parser() -> argparse.ArgumentParser:
    store_help = (
        "a directory, file://, redis://, rediss:// or unix:// URL "
        "(default: $TRACKED_STORE, else the per-user temporary directory)"
    )
    common = _Parser(add_help=False)
    common.add_argument("--store", default=argparse.SUPPRESS, help=store_help)
    parser = _Parser(prog="tracked", description="Look at the progresses in a tracked store.")
    parser.add_argument("--store", default=None, help=store_help)
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str, run: Callable[[argparse.Namespace], int], text: str, epilog: str = ""
    ) -> Any:
        sub = commands.add_parser(
            name, parents=[common], help=text, description=text, epilog=epilog or None
        )
        sub.set_defaults(run=run)
        return sub

    listing = command("list", _cmd_list, "List progresses, running ones first.")
    listing.add_argument("--all", action="store_true", help="also those ended over 24h ago")
    listing.add_argument("--json", action="store_true", help="one wire JSON object per line")

    show = command("show", _cmd_show, "Show one progress and its last messages.")
    _add_name(show)
    show.add_argument("--json", action="store_true", help="print the wire JSON")
    show.add_argument(
        "--children", action="store_true", help="a group's children, by state (JSON: one a line)"
    )

    watch = command(
        "watch",
        _cmd_watch,
        "Follow one progress until it ends: a live bar on a terminal, else a line per change.",
        "exit status: 0 finished, 1 failed, cancelled or abandoned, 2 not found or bad input",
    )
    _add_name(watch)
    watch.add_argument("--wait", default="0", metavar="SECONDS", help="wait this long for it")
    watch.add_argument("--interval", default="0.5", metavar="SECONDS", help="poll interval")

    cancel = command(
        "cancel",
        _cmd_cancel,
        "Ask a running progress to stop (it stops at its next yield or check).",
        "exit status: 0 asked (with --wait: it ended cancelled in time), 1 not running, "
        "ended another way or still running after --wait, 2 bad input",
    )
    _add_name(cancel)
    cancel.add_argument(
        "--wait", default=None, metavar="SECONDS", help="wait this long for it to end cancelled"
    )

    prune = command("prune", _cmd_prune, "Delete ended progresses older than a duration.")
    prune.add_argument("--older-than", required=True, metavar="DURATION", help="30s, 2h, 7d...")

    serve = command("serve", _cmd_serve, "Serve the status route and a live page over HTTP.")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument(
        "--port", default=8080, type=_port, help="port, 0 for any free one (default 8080)"
    )
    serve.add_argument(
        "--allow-cancel",
        action="store_true",
        help="let anyone who can reach the server stop running progresses (a Stop button)",
    )
    return parser


def _port(text: str) -> int:
    """A TCP port for ``--port``: 0 (the system picks a free one) to 65535."""
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535 (0: any free port), got {text!r}")
    return port


def _add_name(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help="the progress name (or a bare progress_id)")
    parser.add_argument("--progress-id", default=None, metavar="ID", help="the client's id")


def _version() -> str:
    from . import __version__

    return f"tracked {__version__}"


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``30s``, ``15m``, ``2h``, ``7d`` or ``1w``.

    A negative duration is refused with its reason: "ended longer ago than -5d"
    would mean every ended progress, which is ``0s`` said by accident."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise UsageError(f"bad duration {text!r}: use a number and a unit, as in 30s, 2h or 7d")
    sign, number, unit = match.groups()
    if sign:
        raise UsageError(
            f"bad duration {text!r}: a duration cannot be negative, it counts back from now "
            f"(0s means every ended progress; did you mean {number}{unit}?)"
        )
    seconds = float(number) * _UNITS[unit]
    if seconds == float("inf"):
        raise UsageError(f"bad duration {text!r}: too long")
    return seconds


def _seconds(text: str, what: str, at_most: float = float("inf")) -> float:
    """A number of seconds from 0 to ``at_most`` (finite) given to option ``what``."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value <= at_most or value == float("inf"):
        limit = "" if at_most == float("inf") else f" and <= {at_most:g}"
        raise UsageError(f"{what} must be a number of seconds >= 0{limit}, got {text!r}")
    return value


def _store(args: argparse.Namespace) -> Store:
    """The store named by ``--store``, else by ``$TRACKED_STORE``, else the per-user default.

    A store someone named must be one the command can see: an existing directory
    (a typo does not create an empty store), not this process's own memory."""
    spec, origin = args.store, "--store"
    if spec is None:
        spec, origin = os.environ.get("TRACKED_STORE") or None, "$TRACKED_STORE"
    if spec is None:
        return default_store()
    _check_store_spec(spec, origin)
    try:
        return open_store(spec)
    except ImportError as exc:  # a Redis URL without redis-py: the message names the extra
        raise UsageError(f"{origin}: {exc}") from None


def _check_store_spec(spec: str, origin: str) -> None:
    """``UsageError`` for a named store this command cannot see: empty, a process's own
    memory, or a directory that does not exist."""
    if not spec.strip():
        raise UsageError(f"{origin} is empty: give a directory or a store URL")
    scheme, sep, rest = spec.partition("://")
    if sep and scheme.lower() == "memory":
        raise UsageError(
            f"{origin} {spec!r} is a store inside one process, which this command cannot see:"
            " use the directory or Redis URL the jobs write to"
        )
    if not sep or scheme.lower() == "file":
        _check_directory(rest if sep else spec, origin)


def _check_directory(text: str, origin: str) -> None:
    """Raise ``UsageError`` unless ``text`` (from option ``origin``) is an existing directory."""
    if not text:
        raise UsageError(f"{origin} names no directory: give one after file://")
    path = Path(text).expanduser()
    where = " (from $TRACKED_STORE)" if origin.startswith("$") else ""
    try:
        is_dir, exists = path.is_dir(), path.exists()
    except OSError as exc:  # a parent that cannot be searched, a name too long
        problem = f"cannot use store directory {str(path)!r}{where}: {exc.strerror}"
        raise UsageError(problem) from exc
    if not is_dir:
        problem = "is not a directory" if exists else "does not exist"
        raise UsageError(f"store directory {str(path)!r}{where} {problem}")


def _where(store: Store) -> str:
    """How the command names the store it read, in footers and errors."""
    return printable(repr(store))


def _keys(args: argparse.Namespace) -> tuple[str, ...]:
    """The keys ``NAME`` may mean: itself, and, when it is written as ``tracked list``
    shows it (``name?progress_id=ID``) and no ``--progress-id`` is given, that pair, so
    a NAME copied from the list finds its progress."""
    key = make_key(args.name, args.progress_id)
    name, separator, progress_id = args.name.rpartition(LABEL_SEPARATOR)
    if args.progress_id is not None or not separator or not name or not progress_id:
        return (key,)
    try:
        return (key, make_key(name, progress_id))
    except TrackedError:
        return (key,)


def _load_any(store: Store, keys: Sequence[str]) -> tuple[str, State | None]:
    """The first of ``keys`` the store holds, and its state; else the first key and None."""
    for key in keys:
        state = store.load(key)
        if state is not None:
            return key, state
    return keys[0], None


def _not_found(args: argparse.Namespace, key: str, store: Store, waited: str = "") -> str:
    """The one-line error for a progress the store does not hold, with the hint a newcomer
    needs when the name alone is not the key (runs started with a progress_id)."""
    hint = ""
    if args.progress_id is None and LABEL_SEPARATOR not in args.name:
        hint = "; started with a progress_id? add --progress-id ID, or write"
        hint += f" {display_key(args.name)}{LABEL_SEPARATOR}ID as tracked list shows it"
    return f"no progress {_shown(key)} in {_where(store)}{waited}{hint}"


# ----------------------------------------------------------------------------- commands


def _cmd_list(args: argparse.Namespace) -> int:
    store = _store(args)
    everything = store.list()
    for problem in store.unreadable():  # one line each, never skipped silently
        print(f"tracked: skipped {printable(problem)}", file=sys.stderr)
    states = everything if args.all else recent(everything)
    if args.json:
        for state in states:
            print(json_line(state))
        return EXIT_OK
    rows = [("NAME", "STATE", "PROGRESS", "RATE", "STARTED", "STATUS")]
    now = time.time()
    for s in states:
        started = "never" if never_started(s) else span(now - s.start_time) + " ago"
        status = s.status if s.children is None else children_text(s)
        rows.append((label(s), state_text(s), fraction(s), rate(s), started, status))
    _print_table(rows, sys.stdout)
    print(f"\n{_list_footer(store, len(states), len(everything) - len(states))}")
    return EXIT_OK


def _list_footer(store: Store, shown: int, hidden: int) -> str:
    """The line under the table: which store was read, and what ``--all`` would add,
    so an empty table cannot be mistaken for an empty store, or the wrong one."""
    noun = "progress" if shown == 1 else "progresses"
    more = f"; {hidden} ended over 24h ago (--all shows them)" if hidden else ""
    return f"{shown} {noun} in {_where(store)}{more}"


def _print_table(rows: Sequence[Sequence[str]], out: TextIO) -> None:
    """``rows`` in aligned columns, every cell escaped with ``printable``."""
    shown = [[printable(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in shown) for i in range(len(shown[0]))]
    for row in shown:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        print("  ".join(cells).rstrip(), file=out)


def _cmd_show(args: argparse.Namespace) -> int:
    keys = _keys(args)
    store = _store(args)
    key, state = _load_any(store, keys)
    if state is None:
        raise UsageError(_not_found(args, key, store))
    if args.children:
        return _print_children(store, key, state, as_json=args.json)
    if args.json:
        print(json_line(state))
        return EXIT_OK
    for field, value in [*_details(state), ("store", _where(store))]:
        print(f"{field + ':':<13} {printable(value)}")
    messages = state.messages[-SHOW_MESSAGES:]
    print(f"messages:     {len(messages)} shown of {state.message_count}")
    for message in messages:
        print(f"  {printable(message)}")
    return EXIT_OK


def _print_children(store: Store, key: str, state: State, *, as_json: bool) -> int:
    """``tracked show GROUP --children``: each child under the state it is counted in."""
    if state.children is None:
        raise UsageError(f"{_shown(key)} is not a group (it has no children)")
    for line in children_lines(state, store.group_children(key), as_json=as_json):
        print(line)
    return EXIT_OK


def _details(state: State) -> list[tuple[str, str]]:
    return [
        ("name", state.name if state.name is not None else "-"),
        ("progress_id", state.progress_id or "-"),
        ("state", state_text(state)),
        ("status", state.status),
        ("progress", fraction(state)),
        ("rate", rate(state)),
        ("eta", span(state.eta)),
        ("elapsed", "-" if never_started(state) else span(state.elapsed)),
        ("started", _started(state)),
        ("error", state.error or "-"),
        *([] if state.children is None else [("children", children_text(state))]),
        ("result", "-" if state.result is None else json.dumps(state.result, ensure_ascii=False)),
    ]


def _started(state: State) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(state.start_time))
    return f"never (queued {when})" if never_started(state) else when


def _shown(key: str) -> str:
    return f"'{display_key(key)}'"


def _cmd_prune(args: argparse.Namespace) -> int:
    older_than = parse_duration(args.older_than)
    store = _store(args)
    deleted = store.prune(older_than)
    for problem in store.unreadable():  # skipped by prune: one line each, as list does
        print(f"tracked: skipped {printable(problem)}", file=sys.stderr)
    noun = "progress" if deleted == 1 else "progresses"
    print(f"deleted {deleted} ended {noun} older than {args.older_than}")
    return EXIT_OK


def _cmd_cancel(args: argparse.Namespace) -> int:
    keys = _keys(args)
    wait = None if args.wait is None else _seconds(args.wait, "--wait")
    store = _store(args)
    key, asked = _load_any(store, keys)  # NAME as tracked list shows it works here too
    name, progress_id = split_key(key)
    if not cancel(name, progress_id=progress_id, store=store):
        state = store.load(key)
        why = "is not in" if state is None else f"already ended {state.state} in"
        print(
            printable(f"tracked cancel: progress {_shown(key)} {why} {_where(store)}"),
            file=sys.stderr,
        )
        return EXIT_ENDED_BADLY
    print(printable(f"asked progress {_shown(key)} to stop"), flush=True)
    if wait is None:
        return EXIT_OK
    return _wait_cancelled(store, key, asked, wait)


def _wait_cancelled(store: Store, key: str, asked: State | None, wait: float) -> int:
    """``tracked cancel --wait``: wait up to ``wait`` seconds for the run asked to stop
    to end; say how it ended (exit 0 only if ``cancelled``)."""
    deadline = time.monotonic() + wait
    while True:
        latest = store.load(key)
        if latest is not None and asked is not None and latest.start_time != asked.start_time:
            # Another run of the key started since (the one asked ended in between).
            print(
                printable(
                    f"tracked cancel: progress {_shown(key)} ended and a new run of it"
                    " started before its end could be read"
                ),
                file=sys.stderr,
            )
            return EXIT_ENDED_BADLY
        if latest is None or not latest.in_progress:
            break
        if time.monotonic() >= deadline:
            print(
                printable(f"tracked cancel: progress {_shown(key)} still runs after {wait:g}s"),
                file=sys.stderr,
            )
            return EXIT_ENDED_BADLY
        time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
    return _cancel_outcome(key, latest)


def _cancel_outcome(key: str, latest: State | None) -> int:
    """Say how the run asked to stop ended (``latest``: None if deleted); exit 0 only
    if it ended ``cancelled``."""
    if latest is not None and latest.state == "cancelled":
        print(printable(f"progress {_shown(key)} ended cancelled"))
        return EXIT_OK
    how = "was deleted" if latest is None else ended_how(latest)
    print(printable(f"tracked cancel: progress {_shown(key)} {how}"), file=sys.stderr)
    return EXIT_ENDED_BADLY


# ----------------------------------------------------------------------------- watch


def exit_status(state: State) -> int:
    """``watch``'s exit status for an ended progress: 0 finished, 1 any other end."""
    return EXIT_OK if state.state == "finished" else EXIT_ENDED_BADLY


def _cmd_watch(args: argparse.Namespace) -> int:
    keys = _keys(args)
    wait = _seconds(args.wait, "--wait")
    interval = max(0.05, _seconds(args.interval, "--interval", at_most=MAX_INTERVAL))
    store = _store(args)
    key, state = _wait_for(args, store, keys, wait, interval)
    view = make_view(sys.stdout)
    outage: list[str] = []
    try:
        while True:
            view.update(state)
            if not state.in_progress:
                break
            time.sleep(interval)
            latest = _load_through_outage(store, key, state, outage)
            if latest is None:
                gone = f"progress {_shown(key)} was deleted from {_where(store)} while watched"
                raise UsageError(gone)
            state = latest
    finally:
        view.close()
    return exit_status(state)


def _load_through_outage(store: Store, key: str, shown: State, outage: list[str]) -> State | None:
    """Load ``key``; while the store fails, say so once on stderr and keep showing
    the last state, so a restarting Redis or a moved directory does not end a watch."""
    try:
        state = store.load(key)
    except TrackedError as exc:
        if not outage:
            outage.append(str(exc))
            print(printable(f"tracked watch: {exc}; retrying"), file=sys.stderr, flush=True)
        return shown
    if outage:
        outage.clear()
        print("tracked watch: the store answers again", file=sys.stderr, flush=True)
    return state


def _wait_for(
    args: argparse.Namespace, store: Store, keys: Sequence[str], wait: float, interval: float
) -> tuple[str, State]:
    deadline = time.monotonic() + wait
    while True:
        key, state = _load_any(store, keys)
        if state is not None:
            return key, state
        if time.monotonic() >= deadline:
            waited = f" after waiting {wait:g}s" if wait else ""
            raise UsageError(_not_found(args, key, store, waited))
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))


# ----------------------------------------------------------------------------- serve


def _cmd_serve(args: argparse.Namespace) -> int:
    family = address_family(args.host, args.port)
    store = _store(args)
    app = build_app(store, allow_cancel=args.allow_cancel)
    server = listen(args.host, args.port, app, family)
    host, port = str(server.server_address[0]), int(server.server_address[1])
    url = f"http://{host_port(host, port)}/"
    print(f"tracked: serving {url} (store: {_where(store)}); Ctrl-C stops", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    return EXIT_OK
