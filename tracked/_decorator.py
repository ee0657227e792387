"""``@tracked``: wrap a function or generator function so each call is a progress.

What kind of callable it wraps is decided once, at decoration. Name and total
are resolved at each call from its arguments. Generator functions are driven
step by step so every yield counts (``_loops``: the library's hot path).
"""

from __future__ import annotations

import contextvars
import dataclasses
import inspect
import string
from collections.abc import AsyncGenerator, Callable, Coroutine, Generator, Mapping
from typing import Any, TypeVar

import wrapt

from ._api import start, start_queued
from ._checks import check_interval, check_max_messages
from ._ledger import group_token
from ._loops import SizedGenerator, awaiting, drive, drive_async, returned
from ._progress import (
    Progress,
    current_progress,
)
from ._queued import NotStarted, find_takeover, stop_signal, take_over
from ._scope import StoreSpec, request_scope, resolve_store
from ._state import check_total, validate_name, validate_progress_id
from ._store import Store
from .errors import Cancelled, InvalidName, InvalidValue

__all__ = [
    "CallPlan",
    "SizedGenerator",
    "Spec",
    "describe_call",
    "tracked",
    "tracked_function",
    "tracked_store",
]

F = TypeVar("F", bound=Callable[..., Any])
NameSpec = str | Callable[..., str] | None
TotalSpec = int | Callable[..., int | None] | None
ProgressIdSpec = str | Callable[..., str] | None
#: A group: a ``tracked.Group``, its token, or a callable giving one (or None) per call.
GroupSpec = object | Callable[..., object] | None


class _DefaultTotal(int):
    """The default ``total`` (100, a percentage): the same value as an explicit 100,
    but told apart from it, because only a total the caller gave is a length."""

    __slots__ = ()


DEFAULT_TOTAL = _DefaultTotal(100)


def tracked(
    name: NameSpec = None,
    total: TotalSpec = DEFAULT_TOTAL,
    *,
    store: StoreSpec | None = None,
    min_interval: float = 0.1,
    max_messages: int = 1000,
    progress_id: ProgressIdSpec = None,
    group: GroupSpec = None,
) -> Callable[[F], F]:
    """Make every call of the decorated function or generator function a progress.

    ``name`` is a text, a format template filled from the call's arguments
    (``"import-{user_id}"``), or a callable taking the call's arguments; None
    means the client's progress_id in a web request, else the function's
    qualified name. ``total`` is an int, None (unknown), or a callable taking
    the call's arguments. A generator's (or async generator's) every yield adds
    one; yielded strings are also messages. The progress is claimed at the call,
    so a conflict raises ``AlreadyRunning`` there, also for coroutine functions.
    ``progress_id`` is a text or a callable taking the call's arguments (a queue
    worker names a run by its job id this way); None means the request's.
    ``group`` (a ``tracked.Group``, its token, or a callable taking the call's
    arguments and returning one or None) makes each call a child of that group.
    The function's return value (a generator's ``return`` value), unless None,
    becomes the progress's ``result``.

    When ``total`` is given (an int, or a callable returning one), the iterator a
    generator function returns also has ``len()`` and ``__length_hint__``: the
    items still to come (the total less the items yielded; 0 once it has ended),
    so ``tqdm(gen())`` and ``list(gen())`` see it. Iterating it runs the generator
    itself, at no cost per item. With the default total (100, a percentage) or
    None it is the plain generator, which has no length.
    """
    spec = Spec(name, total, store, min_interval, max_messages, progress_id, group)

    def decorate(func: F) -> F:
        target = inspect.unwrap(getattr(func, "__func__", func))
        if not callable(target):
            raise TypeError(f"@tracked(...) decorates a function, not {func!r}")
        spec.check_template(target)
        wrapper: Callable[[Callable[..., Any], Any, tuple[Any, ...], dict[str, Any]], Any]
        if inspect.isgeneratorfunction(target):
            wrapper = spec.call_generator
        elif inspect.isasyncgenfunction(target):
            wrapper = spec.call_async_generator
        elif inspect.iscoroutinefunction(target):
            wrapper = spec.call_coroutine
        else:
            wrapper = spec.call
        decorated = wrapt.decorator(wrapper)(func)
        # For describe_call (a queue integration); a ``_self_`` name stays on the wrapper.
        decorated._self_tracked_spec = spec  # type: ignore[attr-defined]
        return decorated  # type: ignore[return-value]

    return decorate


@dataclasses.dataclass(frozen=True, slots=True)
class CallPlan:
    """What a call of a ``@tracked`` function will be, worked out before it runs (a
    queue integration publishes its ``queued`` record from it)."""

    name: str | None
    total: int | None
    store: Store
    #: ``module.qualname`` of the decorated function: the worker that runs it takes
    #: the queued run over.
    function: str
    #: The token of the group the call is a child of (``@tracked(group=...)``), or None.
    group: str | None = None


def tracked_function(func: object) -> Callable[..., Any] | None:
    """The ``@tracked`` function ``func`` is, or wraps (through ``__wrapped__``, as a
    Celery task's ``run`` with ``autoretry_for`` does); None if there is none."""
    for _ in range(4):
        if func is None:
            return None
        if isinstance(getattr(func, "_self_tracked_spec", None), Spec):
            return func  # type: ignore[return-value]
        func = getattr(func, "__wrapped__", None)
    return None


def tracked_store(func: object) -> Store | None:
    """The store a ``@tracked`` function's decorator names (None: the default)."""
    found = tracked_function(func)
    spec = getattr(found, "_self_tracked_spec", None)
    return spec.store if isinstance(spec, Spec) else None


def describe_call(
    func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> CallPlan:
    """The name, total and store a call ``func(*args, **kwargs)`` of a ``@tracked``
    function would use, outside any web request; ``TypeError`` for another callable."""
    spec = getattr(func, "_self_tracked_spec", None)
    wrapped = getattr(func, "__wrapped__", None)
    if not isinstance(spec, Spec) or wrapped is None:
        raise TypeError(f"{func!r} is not a @tracked function")
    instance = getattr(func, "__self__", None)
    total = spec.total
    if callable(total):
        total = _check_total_result(total(*args, **kwargs))
    context = contextvars.Context()  # no request scope: the worker will have none either
    name = context.run(spec.resolve_name, wrapped, instance, args, kwargs)
    store = spec.store if spec.store is not None else context.run(resolve_store, None)
    group = spec.group(*args, **kwargs) if callable(spec.group) else spec.group
    return CallPlan(name, total, store, f"{wrapped.__module__}.{wrapped.__qualname__}",
                    None if group is None else group_token(group))


class Spec:
    """The decorator's arguments, checked once, and the two call paths."""

    def __init__(
        self,
        name: NameSpec,
        total: TotalSpec,
        store: StoreSpec | None,
        min_interval: float,
        max_messages: int,
        progress_id: ProgressIdSpec = None,
        group: GroupSpec = None,
    ) -> None:
        if not (name is None or isinstance(name, str) or callable(name)):
            raise InvalidName(f"name must be a str, a callable or None, not {type(name).__name__}")
        if not callable(total):
            check_total(total)
        self.name = name
        self.total = total
        self.sized = total is not DEFAULT_TOTAL and total is not None
        self.fields = _name_fields(name)
        self.store = None if store is None else resolve_store(store)
        self.min_interval = check_interval(min_interval)
        self.max_messages = check_max_messages(max_messages)
        self.progress_id = _check_progress_id(progress_id)
        self.group = group if group is None or callable(group) else group_token(group)

    def check_template(self, target: Callable[..., Any]) -> None:
        """Refuse, at decoration, a template naming an argument the function lacks."""
        try:
            parameters = inspect.signature(target).parameters
        except (TypeError, ValueError):
            return
        if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
            return
        known = set(parameters) | {"self", "cls"}
        unknown = [field for field in self.fields if field not in known]
        if unknown:
            raise InvalidName(
                f"name template {self.name!r} uses {', '.join(unknown)}, "
                f"which {getattr(target, '__qualname__', target)!r} does not take"
            )

    def start(
        self,
        wrapped: Callable[..., Any],
        instance: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        position: int | None = None,
        group: str | None = None,
    ) -> Progress:
        """Claim the run of this call (``queued`` at ``position`` when one is given), in
        ``group`` (a token) or the decorator's group."""
        total = self.total
        if callable(total):
            total = _check_total_result(total(*args, **kwargs))
        found = find_takeover(wrapped)
        if found is not None:  # a queue's worker starts this queued run: take it over
            return take_over(
                found,
                total,
                store=self.store,
                min_interval=self.min_interval,
                max_messages=self.max_messages,
            )
        progress_id = self.progress_id
        if callable(progress_id):
            progress_id = validate_progress_id(progress_id(*args, **kwargs))
        name = self.resolve_name(wrapped, instance, args, kwargs)
        if group is None and self.group is not None:
            group = self.group(*args, **kwargs) if callable(self.group) else self.group
        if position is not None:
            return start_queued(
                position,
                name,
                total,
                progress_id=progress_id,
                store=self.store,
                min_interval=self.min_interval,
                max_messages=self.max_messages,
                group=group,
            )
        return start(
            name,
            total,
            progress_id=progress_id,
            store=self.store,
            min_interval=self.min_interval,
            max_messages=self.max_messages,
            group=group,
        )

    def resolve_name(
        self,
        wrapped: Callable[..., Any],
        instance: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> str | None:
        """The progress name for one call, from the decorator's ``name``."""
        name = self.name
        if name is None:
            if self.progress_id is not None:
                return None
            scope = request_scope.get()
            if scope is not None and scope.progress_id is not None:
                return None
            return f"{wrapped.__module__}.{wrapped.__qualname__}"
        if callable(name):
            return validate_name(name(*args, **kwargs))
        if not self.fields:
            return name
        return validate_name(_fill(name, _arguments(wrapped, instance, args, kwargs)))

    def call(
        self,
        wrapped: Callable[..., Any],
        instance: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        """Call a plain function as one tracked run."""
        try:
            progress = self.start(wrapped, instance, args, kwargs)
        except NotStarted as skipped:  # a queued run cancelled before its worker got to it
            return skipped.value
        try:
            with progress:
                return returned(progress, wrapped(*args, **kwargs))
        except Cancelled as exc:  # a queue's worker may take another signal for a stop
            replaced = stop_signal(progress, exc)
            if replaced is None:
                raise
            raise replaced from exc

    def call_generator(
        self,
        wrapped: Callable[..., Any],
        instance: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Generator[Any, Any, Any]:
        """Call a generator function and wrap its generator in the per-yield loop (``drive``)."""
        generator = wrapped(*args, **kwargs)  # runs none of its body yet
        progress = self.start_for(generator.close, wrapped, instance, args, kwargs)
        # Copied now, not at the first step: a web server may iterate the generator
        # after the request scope of the call is gone.
        context = contextvars.copy_context()
        context.run(current_progress.set, progress)
        driven = drive(generator, progress, context)
        if self.sized and progress.total is not None:
            return SizedGenerator(driven, progress)
        return driven

    def call_coroutine(
        self,
        wrapped: Callable[..., Any],
        instance: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Coroutine[Any, Any, Any]:
        """Call a coroutine function; its coroutine is tracked while awaited (``awaiting``)."""
        coroutine = wrapped(*args, **kwargs)  # runs none of its body yet
        try:
            progress = self.start_for(coroutine.close, wrapped, instance, args, kwargs)
        except NotStarted as skipped:  # a queued run cancelled before its worker got to it
            return _value(skipped.value)
        return awaiting(coroutine, progress)

    def call_async_generator(
        self,
        wrapped: Callable[..., Any],
        instance: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> AsyncGenerator[Any, Any]:
        """Call an async generator function and wrap its generator in ``drive_async``."""
        generator = wrapped(*args, **kwargs)  # runs none of its body yet
        progress = self.start_for(lambda: None, wrapped, instance, args, kwargs)
        return drive_async(generator, progress)

    def start_for(
        self,
        close: Callable[[], object],
        wrapped: Callable[..., Any],
        instance: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        group: str | None = None,
    ) -> Progress:
        """Claim the progress of a call that made a generator or coroutine: it ends
        ``cancelled`` if dropped unfinished; ``close`` it, unrun, if the claim fails."""
        try:
            progress = self.start(wrapped, instance, args, kwargs, group=group)
        except BaseException:
            close()
            raise
        progress.cancel_on_collect()
        return progress


async def _value(value: Any) -> Any:
    return value


def _name_fields(name: NameSpec) -> tuple[str, ...]:
    """The argument names the decorator's ``name`` refers to (a template's fields);
    ``InvalidName`` for a fixed name that is not a valid one."""
    fields = _template_fields(name) if isinstance(name, str) else ()
    if isinstance(name, str) and not fields:
        validate_name(name)
    return fields


def _check_progress_id(progress_id: ProgressIdSpec) -> ProgressIdSpec:
    """The decorator's ``progress_id``: a valid one, a callable or None; ``InvalidName`` else."""
    if isinstance(progress_id, str):
        validate_progress_id(progress_id)
    elif not (progress_id is None or callable(progress_id)):
        raise InvalidName(
            f"progress_id must be a str, a callable or None, not {type(progress_id).__name__}"
        )
    return progress_id


def _template_fields(template: str) -> tuple[str, ...]:
    """The argument names a name template refers to (``"a-{user.id}"`` -> ``("user",)``)."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise InvalidName(f"bad name template {template!r}: {exc}") from None
    fields = []
    for _text, field, _spec, _conversion in parsed:
        if field is None:
            continue
        root = field.split(".", 1)[0].split("[", 1)[0]
        if not root or root.isdigit():
            raise InvalidName(f"name template {template!r} must name arguments: {{{field}}}")
        fields.append(root)
    return tuple(fields)


def _arguments(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> dict[str, Any]:
    """The call's arguments by parameter name, defaults applied; ``self``/``cls`` too."""
    bound = inspect.signature(wrapped).bind(*args, **kwargs)
    bound.apply_defaults()
    arguments = dict(bound.arguments)
    for parameter in inspect.signature(wrapped).parameters.values():
        if parameter.kind is parameter.VAR_KEYWORD:
            arguments.update(arguments.pop(parameter.name, {}))
    if instance is not None:
        arguments.setdefault("cls" if isinstance(instance, type) else "self", instance)
    return arguments


def _fill(template: str, arguments: Mapping[str, Any]) -> str:
    try:
        return template.format_map(arguments)
    except (KeyError, AttributeError, IndexError, ValueError, TypeError) as exc:
        raise InvalidName(f"cannot fill name template {template!r}: {exc!r}") from None


def _check_total_result(total: object) -> int | None:
    try:
        return check_total(total)
    except InvalidValue as exc:
        raise InvalidValue(f"the total callable returned a bad total: {exc}") from None


