"""01. Basic concepts: what a context manager is, and the patterns every later module builds on.

A context manager pairs a setup with a cleanup that runs however the block ends. This module
starts where everyone meets one (``with open()``), shows what a ``with`` statement expands to
(and runs the expansion by hand against the real statement), then writes the classic managers
by hand: ``@contextmanager`` with ``try/finally`` (setup -> use -> cleanup), a timer, a
temporary configuration override (environment variables and a settings dict, restored even
when the block raises), class-based managers whose ``__exit__`` decides whether an exception
is swallowed, a real ``sqlite3`` transaction (``with conn:`` commits or rolls back but does not
close; ``contextlib.closing`` closes), ``contextlib.suppress``, ``nullcontext``,
``ContextDecorator`` and an atomic file write that keeps a backup. Each is then pointed at the
llmctx part that does the same job for real: ``llmctx.monitor`` (timer),
``llmctx.price_override`` (temporary configuration), ``llmctx.timed`` (decorator). No LLM
calls: everything here is plain Python, checked at the end.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, MutableMapping
from contextlib import (
    AbstractContextManager,
    ContextDecorator,
    closing,
    contextmanager,
    nullcontext,
    suppress,
)
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TextIO

import llmctx
from llmctx.workshop._common import MODEL_NAME, Checks, console, header, run, say, section, usd

_SLEEP = 0.05  # seconds the timer demos sleep: long enough to measure, short enough not to wait


# ------------------------------------------------------------ 0. what `with` expands to
class Traced:
    """A class-based manager that logs its calls; with ``swallow`` its ``__exit__`` returns True."""

    def __init__(self, log: list[str], *, swallow: bool = False) -> None:
        self.log = log
        self.swallow = swallow

    def __enter__(self) -> str:
        self.log.append("__enter__")
        return "value"

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        self.log.append(f"__exit__({exc_type.__name__ if exc_type else None})")
        return self.swallow


def expanded_with(manager: Any, body: Callable[[Any], object]) -> None:
    """``with manager as value: body(value)``, written out as the language reference does.

    Args:
        manager: any context manager.
        body: the block; receives what ``__enter__`` returned.

    Both methods are looked up on the *type*, before ``__enter__`` runs (so an ``__exit__``
    set on the instance is ignored); an exception in the block goes to ``__exit__`` with
    ``sys.exc_info()`` and is re-raised unless it returns a true value; on success
    ``__exit__(None, None, None)`` runs from ``finally``.
    """
    mgr = manager
    exit_ = type(mgr).__exit__
    value = type(mgr).__enter__(mgr)
    hit_except = False
    try:
        body(value)
    except BaseException:  # the expansion hands *every* exception to __exit__, as `with` does
        hit_except = True
        if not exit_(mgr, *sys.exc_info()):
            raise
    finally:
        if not hit_except:
            exit_(mgr, None, None, None)


_EXPANSION = """\
  mgr = EXPR
  exit = type(mgr).__exit__      # looked up on the type, before entering
  value = type(mgr).__enter__(mgr)
  hit_except = False
  try:
      VAR = value
      BLOCK
  except BaseException:          # any exception, even KeyboardInterrupt
      hit_except = True
      if not exit(mgr, *sys.exc_info()):
          raise                  # re-raised unless __exit__ returned true
  finally:
      if not hit_except:
          exit(mgr, None, None, None)"""


# ----------------------------------------------------------------------------- 1. the shape
@contextmanager
def managed(name: str, log: list[str]) -> Iterator[str]:
    """Set up a resource, hand it to the block, clean it up however the block ends.

    Args:
        name: the resource's label.
        log: receives ``"setup"`` and ``"cleanup"`` (the block appends its own steps).

    Yields:
        The resource (here just its name).

    On exit (normal, exception, cancellation) ``"cleanup"`` is logged and the exception, if
    any, propagates: ``finally`` neither catches nor swallows.
    """
    log.append("setup")
    try:
        yield name
    finally:
        log.append("cleanup")


# ----------------------------------------------------------------------------- 2. a timer
class Elapsed:
    """What :func:`timer` measured; filled in when the block exits."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.error: str | None = None


@contextmanager
def timer(label: str) -> Iterator[Elapsed]:
    """Measure a block's wall-clock time with ``time.perf_counter``.

    Args:
        label: printed with the result.

    Yields:
        An :class:`Elapsed` whose ``seconds`` is set on exit: the block cannot read the final
        figure from inside, so the manager hands out a mutable result object.

    On exit (also on an exception, which propagates) the time is recorded and printed.
    """
    result = Elapsed()
    start = time.perf_counter()
    try:
        yield result
    except Exception as exc:
        result.error = type(exc).__name__
        raise
    finally:
        result.seconds = time.perf_counter() - start
        console.print(f"  ⏱  {label}: {result.seconds * 1000:.1f} ms")


# ------------------------------------------------------------- 3. temporary configuration
@contextmanager
def env_override(**values: str | None) -> Iterator[None]:
    """Set (or, with None, unset) environment variables inside the block only.

    Args:
        **values: variable names and their temporary values; None removes the variable.

    On exit (normal, exception, cancellation) every variable gets its previous value back, and
    one that did not exist before is removed again. The originals are saved *before* anything
    changes and the changes are made inside ``try``, so a failure half-way through setting
    them is rolled back too.
    """
    saved = {key: os.environ.get(key) for key in values}
    try:
        for key, value in values.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


_MISSING = object()


@contextmanager
def settings_override(
    settings: MutableMapping[str, Any], **changes: Any
) -> Iterator[MutableMapping[str, Any]]:
    """Change some keys of a settings dict inside the block only.

    Args:
        settings: the dict to change in place (other code holding it sees the changes).
        **changes: the temporary values; keys the dict lacks are added for the block.

    Yields:
        ``settings`` itself.

    On exit every changed key gets its old value back and added keys are deleted, whether the
    block returned or raised.
    """
    saved = {key: settings.get(key, _MISSING) for key in changes}
    try:
        settings.update(changes)
        yield settings
    finally:
        for key, old in saved.items():
            if old is _MISSING:
                settings.pop(key, None)
            else:
                settings[key] = old


# ------------------------------------------------------- 4. class-based: __exit__ decides
class Transaction:
    """Apply staged writes to ``data`` only if the block succeeds (commit / rollback).

    ``__exit__`` sees the exception (type, value, traceback; all None on success). It returns
    False, so Python re-raises the exception after the rollback: the manager *reacts* to the
    error without hiding it.
    """

    def __init__(self, data: dict[str, str]) -> None:
        self.data = data
        self.pending: dict[str, str] = {}
        self.outcome = "not run"

    def __enter__(self) -> dict[str, str]:
        self.pending = {}
        return self.pending

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]:
        if exc_type is None:
            self.data.update(self.pending)
            self.outcome = f"committed {len(self.pending)} write(s)"
        else:
            self.outcome = f"rolled back ({exc_type.__name__})"
        self.pending = {}
        return False  # do not suppress: the caller must learn that the block failed


class Swallow:
    """Suppress the given exception types by returning True from ``__exit__``.

    Returning a true value tells Python "handled": the exception is dropped and execution
    continues after the ``with`` statement. Any other exception gets False and propagates.
    (This is what ``contextlib.suppress`` does.)
    """

    def __init__(self, *types: type[Exception]) -> None:
        self.types = types
        self.swallowed: BaseException | None = None

    def __enter__(self) -> Swallow:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if exc_type is not None and issubclass(exc_type, self.types):
            self.swallowed = exc
            return True
        return False


@contextmanager
def handle_value_errors(log: list[str]) -> Iterator[None]:
    """The generator-based twin of :class:`Swallow` for ValueError.

    In a ``@contextmanager`` generator the exception is thrown in at the ``yield``; catching it
    and *not re-raising* is what suppresses it. A ``return True`` there (as some guides write)
    changes nothing: the generator's return value is ignored.
    """
    try:
        yield
    except ValueError as exc:
        log.append(f"handled ValueError: {exc}")


# ------------------------------------------------------------------ 7. ContextDecorator
class log_duration(ContextDecorator):  # lowercase: used like a function
    """Record how long a block or every call of a decorated function took.

    ``ContextDecorator`` adds ``__call__``: ``@log_duration(...)`` wraps the function in
    ``with self:``. The same instance is entered on every call, so the start times live on a
    stack, not in one attribute (a recursive call would otherwise overwrite it).
    """

    def __init__(self, label: str, sink: list[tuple[str, float]]) -> None:
        self.label = label
        self.sink = sink
        self._starts: list[float] = []

    def __enter__(self) -> log_duration:
        self._starts.append(time.perf_counter())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.sink.append((self.label, time.perf_counter() - self._starts.pop()))


# -------------------------------------------------------------------- 8. atomic write
@contextmanager
def atomic_write(path: Path, *, backup: bool = True, encoding: str = "utf-8") -> Iterator[TextIO]:
    """Write a file all-or-nothing: readers see the old content or the new, never half.

    The block writes to a temporary file in the same directory; only when it finishes without
    an exception is the data flushed to disk and the temporary file renamed over ``path``
    with ``os.replace``. The Python docs promise that the replace, if successful, is atomic
    on POSIX (same filesystem); they promise no such thing on Windows. With ``backup`` the
    previous version is first copied to ``<name>.bak``.

    Args:
        path: the file to (re)write.
        backup: keep the previous content at ``<name>.bak``.
        encoding: text encoding.

    Yields:
        A text file object to write to.

    On an exception or cancellation the temporary file is deleted and ``path`` is untouched;
    the exception propagates.
    """
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    committed = False
    try:
        with os.fdopen(fd, "w", encoding=encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        if backup and path.exists():
            shutil.copy2(path, path.with_name(path.name + ".bak"))
        os.replace(tmp, path)
        committed = True
    finally:
        if not committed:
            tmp.unlink(missing_ok=True)


def _raises(fn: Callable[[], object], exc_type: type[Exception]) -> bool:
    """True when ``fn()`` raised ``exc_type`` (the demos use it to show what propagates)."""
    try:
        fn()
    except exc_type:
        return True
    return False


# ------------------------------------------------------------------------------ sections
def with_open(checks: Checks, folder: Path) -> None:
    """``with open()``: the file is closed when the block ends, also when it raises."""
    section("1. with open(): the manager everyone has used")
    path = folder / "notes.txt"
    with open(path, "w", encoding="utf-8") as f:
        f.write("context managers close what they open\n")
    closed_after_ok = f.closed

    def read_then_fail() -> None:
        with open(path, encoding="utf-8") as g:
            handles.append(g)
            g.readline()
            raise ValueError("a parse error after the first line")

    handles: list[TextIO] = []
    raised = _raises(read_then_fail, ValueError)
    closed_after_error = bool(handles) and handles[0].closed
    say(
        f"f.closed after the block: {closed_after_ok}; after a ValueError in it: "
        f"{closed_after_error}"
    )
    checks.check(closed_after_ok, "with open() closed the file when the block ended")
    checks.check(
        raised and closed_after_error,
        "with open() closed the file when the block raised, and the error propagated",
    )


def with_expanded(checks: Checks) -> None:
    """What ``with`` expands to, run by hand beside the real statement."""
    section("2. What `with EXPR as VAR: BLOCK` expands to (the language reference)")
    console.print(_EXPANSION, style="cyan", highlight=False)
    real: dict[str, list[str]] = {}
    by_hand: dict[str, list[str]] = {}
    for case, swallow in (("ok", False), ("raises", False), ("swallowed", True)):
        for runs in (real, by_hand):
            log: list[str] = []
            runs[case] = log

            def block(value: object, log: list[str] = log, case: str = case) -> None:
                log.append(f"block got {value!r}")
                if case != "ok":
                    raise KeyError(case)

            def go(
                runs: dict[str, list[str]] = runs, log: list[str] = log, swallow: bool = swallow
            ) -> None:
                if runs is real:
                    with Traced(log, swallow=swallow) as v:
                        block(v)
                else:
                    expanded_with(Traced(log, swallow=swallow), block)

            if not _raises(go, KeyError):
                log.append("continued after with")
    for case, log in real.items():
        say(f"{case:9} " + " -> ".join(log).replace("continued after with", "goes on"))
    checks.check(
        real == by_hand,
        "the hand expansion did exactly what `with` did (success, raise, swallow)",
        "the same calls in the same order in all three cases"
        if real == by_hand
        else f"with: {real}; by hand: {by_hand}",
    )
    instance_exit: list[str] = []
    traced = Traced(instance_exit)
    vars(traced)["__exit__"] = lambda *a: instance_exit.append("instance __exit__")
    with traced:
        pass
    checks.check(
        instance_exit == ["__enter__", "__exit__(None)"],
        "with looked __exit__ up on the type: one set on the instance was ignored",
        " -> ".join(instance_exit),
    )


def the_shape(checks: Checks) -> None:
    """``@contextmanager`` with try/finally: setup -> use -> cleanup."""
    section("3. @contextmanager: setup -> yield -> cleanup in finally")
    say("Before `yield`: __enter__; `finally`: __exit__. A raise arrives at the `yield`.")
    ok_log: list[str] = []
    with managed("db-connection", ok_log) as resource:
        ok_log.append(f"use {resource}")
    failing_log: list[str] = []

    def failing_block() -> None:
        with managed("db-connection", failing_log) as res:
            failing_log.append(f"use {res}")
            raise ConnectionError("the server went away")

    reached_caller = _raises(failing_block, ConnectionError)
    say("succeeds: " + " -> ".join(ok_log))
    say("raises:   " + " -> ".join(failing_log) + " -> ConnectionError goes on")
    checks.check(
        ok_log == ["setup", "use db-connection", "cleanup"],
        "setup, use and cleanup ran in order",
        " -> ".join(ok_log),
    )
    checks.check(
        failing_log[-1] == "cleanup" and reached_caller,
        "cleanup ran when the block raised, and the error still reached the caller",
        " -> ".join(failing_log),
    )


def a_timer(checks: Checks) -> None:
    """A hand-written timer, then ``llmctx.monitor``."""
    section("4. A timer, then llmctx.monitor")
    with timer(f"time.sleep({_SLEEP})") as t:
        time.sleep(_SLEEP)

    def slow_then_fail() -> None:
        with timer("sleep, then raise") as t_err:
            timings.append(t_err)
            time.sleep(_SLEEP)
            raise TimeoutError("the model took too long")

    timings: list[Elapsed] = []
    failed_timer_raised = _raises(slow_then_fail, TimeoutError)
    with llmctx.monitor("sleep", attach=False) as m:
        time.sleep(_SLEEP)
    wall = m.result.wall_s if m.result is not None else 0.0
    say(
        f"llmctx.monitor: {wall * 1000:.1f} ms wall, "
        f"{(m.result.cpu_s if m.result else 0) * 1000:.1f} ms CPU, RSS; kept on the session"
    )
    checks.check(
        t.seconds >= _SLEEP, f"the timer measured >= the {_SLEEP}s sleep", f"{t.seconds:.4f}s"
    )
    timed_err = timings[0] if timings else Elapsed()
    checks.check(
        failed_timer_raised and timed_err.seconds >= _SLEEP and timed_err.error == "TimeoutError",
        "the timer still measured when the block raised, and re-raised the error",
        f"{timed_err.seconds:.4f}s, error={timed_err.error}",
    )
    checks.check(wall >= _SLEEP, "llmctx.monitor measured >= the sleep too", f"{wall:.4f}s")


def temporary_configuration(checks: Checks) -> None:
    """Environment variables and a settings dict overridden, restored after an error."""
    section("5. Temporary configuration, restored even after an error")
    env_key = "LLMCTX_WORKSHOP_01_MODEL"
    env_before = os.environ.get(env_key)
    settings: dict[str, Any] = {"model": MODEL_NAME, "temperature": 0.0}
    original = dict(settings)
    seen_inside: dict[str, Any] = {}

    def override_then_fail() -> None:
        with (
            env_override(**{env_key: "tiny-test-model"}),
            settings_override(settings, temperature=0.7, stop=["\n"]) as live,
        ):
            seen_inside["env"] = os.environ.get(env_key)
            seen_inside["settings"] = dict(live)
            raise RuntimeError("a test failed inside the override")

    override_raised = _raises(override_then_fail, RuntimeError)
    say(
        f"env var: inside {seen_inside.get('env')!r}, after {os.environ.get(env_key)!r} "
        "(unset before: removed)"
    )
    say(
        f"temperature: inside {seen_inside.get('settings', {}).get('temperature')}, "
        f"after {settings.get('temperature')}; 'stop' after: {'stop' in settings}"
    )
    checks.check(
        seen_inside.get("env") == "tiny-test-model"
        and seen_inside.get("settings", {}).get("temperature") == 0.7,
        "the overrides were in force inside the block",
    )
    checks.check(
        override_raised and os.environ.get(env_key) == env_before and settings == original,
        "after an exception the env var was restored (removed: it was unset) and the settings too",
        f"{env_key}={os.environ.get(env_key)!r}; settings == original: {settings == original}",
    )
    price_before = llmctx.lookup_price(MODEL_NAME)
    price_inside: Decimal | None = None

    def priced_then_fail() -> None:
        nonlocal price_inside
        with llmctx.price_override(MODEL_NAME, input_per_mtok="0.50", output_per_mtok="1.50"):
            inside = llmctx.lookup_price(MODEL_NAME)
            price_inside = inside.input_per_mtok if inside is not None else None
            raise RuntimeError("boom")

    _raises(priced_then_fail, RuntimeError)
    price_after = llmctx.lookup_price(MODEL_NAME)
    say(
        f"llmctx.price_override: {usd(price_inside)}/Mtok inside, back to "
        f"{'unpriced' if price_after is None else usd(price_after.input_per_mtok)} after the error"
    )
    checks.check(
        price_inside == Decimal("0.50") and price_after == price_before,
        "llmctx.price_override priced the model inside the block and restored it after an error",
        f"inside {price_inside}, after {price_after}",
    )


def exit_decides(checks: Checks) -> None:
    """Class-based managers: ``__exit__`` sees the exception; True swallows it."""
    section("6. Class-based: __exit__(exc_type, exc, tb) decides")
    say("Return False/None: Python re-raises after __exit__. True: swallowed.")
    data = {"greeting": "hello"}
    tx_ok = Transaction(data)
    with tx_ok as staged:
        staged["answer"] = "42"
    tx_bad = Transaction(data)

    def failing_transaction() -> None:
        with tx_bad as staged2:
            staged2["greeting"] = "half-written"
            raise KeyError("validation failed")

    tx_raised = _raises(failing_transaction, KeyError)
    say(f"Transaction 1: {tx_ok.outcome}; Transaction 2: {tx_bad.outcome}")
    checks.check(
        data == {"greeting": "hello", "answer": "42"} and tx_raised,
        "__exit__ committed on success, rolled back on error and let the error propagate",
        f"data={data}",
    )
    after_with: list[str] = []
    swallow = Swallow(ValueError)
    with swallow:
        raise ValueError("the model returned 'forty-two', not a number")
    after_with.append("ran")

    def wrong_type() -> None:
        with Swallow(ValueError):
            raise KeyError("choices")

    key_error_escaped = _raises(wrong_type, KeyError)
    handled: list[str] = []
    with handle_value_errors(handled):
        int("forty-two")
    after_with.append("ran again")
    say("Swallow(ValueError): ValueError swallowed, KeyError went on")
    checks.check(
        swallow.swallowed is not None and after_with == ["ran", "ran again"],
        "returning True from __exit__ swallowed the ValueError; code after `with` ran",
        repr(swallow.swallowed),
    )
    checks.check(key_error_escaped, "an exception type __exit__ did not claim still propagated")
    checks.check(
        len(handled) == 1,
        "a @contextmanager generator suppresses by catching without re-raising",
        handled[0] if handled else "",
    )


def _is_open(conn: sqlite3.Connection) -> bool:
    try:
        conn.execute("SELECT 1")
    except sqlite3.ProgrammingError:  # "Cannot operate on a closed database."
        return False
    return True


def sqlite_transaction(checks: Checks, folder: Path) -> None:
    """A real database transaction: ``with conn:`` commits or rolls back, ``closing`` closes."""
    section("7. A real transaction: sqlite3's `with conn:`, then closing()")
    say("`with conn:` commits or rolls back but does NOT close; closing() does.")
    db = folder / "orders.db"
    with closing(sqlite3.connect(db)) as conn:
        with conn:
            conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT)")
            conn.execute("INSERT INTO orders (item) VALUES ('book')")

        def insert_then_fail() -> None:
            with conn:
                conn.execute("INSERT INTO orders (item) VALUES ('half an order')")
                raise sqlite3.IntegrityError("payment declined")

        raised = _raises(insert_then_fail, sqlite3.IntegrityError)
        open_after_with = _is_open(conn)
        # A second connection sees only what was committed.
        with closing(sqlite3.connect(db)) as other:
            items = [row[0] for row in other.execute("SELECT item FROM orders ORDER BY id")]
    closed_after_closing = not _is_open(conn)
    say(
        f"rows: {items}; {'open' if open_after_with else 'closed'} after `with conn:`; "
        f"{'closed' if closed_after_closing else 'open'} after closing()"
    )
    checks.check(
        raised and items == ["book"],
        "with conn: committed the first insert and rolled back the failed one",
        f"rows seen by another connection: {items}",
    )
    checks.check(open_after_with, "the connection was still open after `with conn:`")
    checks.check(closed_after_closing, "contextlib.closing() closed it")


def contextlib_helpers(checks: Checks, folder: Path) -> None:
    """``suppress`` ignores one named error; ``nullcontext`` stands in for an optional manager."""
    section("8. contextlib.suppress and nullcontext")
    cache = folder / "cache.json"
    unlinked = False
    with suppress(FileNotFoundError):
        cache.unlink()  # the cache may not exist yet: that is fine
        unlinked = True  # not reached: unlink() raised and suppress() swallowed it

    def parse_reply() -> None:
        with suppress(FileNotFoundError):
            int("not a number")

    other_escaped = _raises(parse_reply, ValueError)
    checks.check(
        not unlinked and not cache.exists() and other_escaped,
        "suppress swallowed only FileNotFoundError; a ValueError still propagated",
    )
    lock = threading.Lock()
    observed: list[bool] = []

    def process(items: list[str], guard: AbstractContextManager[object] | None) -> list[str]:
        with guard if guard is not None else nullcontext():
            observed.append(lock.locked())
            return [item.upper() for item in items]

    process(["a", "b"], lock)
    process(["x"], None)
    with nullcontext("already-open client") as client:
        pass
    say(
        f"suppress: missing file ignored, ValueError not; lock held {observed[0]}, "
        f"null {observed[1]}"
    )
    checks.check(
        observed == [True, False] and not lock.locked() and client == "already-open client",
        "nullcontext() stood in for the lock (nothing held) and nullcontext(v) bound v",
        f"lock held inside: {observed}",
    )


def context_decorator(checks: Checks) -> None:
    """One manager used as ``with`` and as ``@decorator``."""
    section("9. ContextDecorator: `with` and `@decorator` in one class")
    durations: list[tuple[str, float]] = []

    @log_duration("tokenize", durations)
    def tokenize(text: str) -> list[str]:
        return text.split()

    words = tokenize("context managers scope resources")
    tokenize("twice")
    with log_duration("block", durations):
        time.sleep(_SLEEP)
    say("timed: " + ", ".join(f"{label} {secs * 1000:.2f} ms" for label, secs in durations))
    say("llmctx.timed() is the library's version (sync and async, attached).")
    checks.check(
        [label for label, _ in durations] == ["tokenize", "tokenize", "block"]
        and words == ["context", "managers", "scope", "resources"]
        and durations[-1][1] >= _SLEEP,
        "the decorator timed both calls (returning their values) and the block its sleep",
    )


def atomic_file(checks: Checks, folder: Path) -> None:
    """A write that leaves the old file or the new one, never half of it."""
    section("10. Atomic write with backup")
    say(
        "Write a temp file beside it; on success os.replace() it over the original: the "
        "Python docs promise a successful replace is atomic on POSIX (not on Windows)."
    )
    target = folder / "config.json"
    target.write_text('{"model": "v1"}', encoding="utf-8")

    def half_write() -> None:
        with atomic_write(target) as handle:
            handle.write('{"model": "v2", "half')
            raise RuntimeError("serializer crashed half-way")

    write_raised = _raises(half_write, RuntimeError)
    after_failure = target.read_text(encoding="utf-8")
    leftovers = sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))
    backup_file = target.with_name(target.name + ".bak")
    with atomic_write(target) as handle:
        handle.write('{"model": "v2"}')
    after_success = target.read_text(encoding="utf-8")
    backup_content = backup_file.read_text(encoding="utf-8") if backup_file.exists() else None
    say(f"failed: {after_failure} kept, {len(leftovers)} temp files; then {after_success}")
    checks.check(
        write_raised and after_failure == '{"model": "v1"}' and not leftovers,
        "a failed atomic write left the original unchanged and no temp file behind",
        after_failure,
    )
    checks.check(
        after_success == '{"model": "v2"}' and backup_content == '{"model": "v1"}',
        "a successful atomic write replaced the file and kept the old one as .bak",
    )


def main() -> None:
    """The module, section by section; then verify what each section claimed."""
    header(1, "Basic concepts", "with open(), the with statement, @contextmanager, __exit__")
    checks = Checks()
    with tempfile.TemporaryDirectory(prefix="llmctx-workshop-01-") as tmp_dir:
        folder = Path(tmp_dir)
        with_open(checks, folder)
        with_expanded(checks)
        the_shape(checks)
        a_timer(checks)
        temporary_configuration(checks)
        exit_decides(checks)
        sqlite_transaction(checks, folder)
        contextlib_helpers(checks, folder)
        context_decorator(checks)
        atomic_file(checks, folder)
    checks.verify()


if __name__ == "__main__":
    run(main)
