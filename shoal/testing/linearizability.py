"""A linearizability checker for histories recorded against the cluster (a small Knossos/Porcupine).

Fault tests record what clients asked and saw, then ask whether some single order of the operations,
consistent with real time, explains every observed result under a sequential specification (a *model*):

    h = History()                                    # clock=time.monotonic by default
    with h.record("c1", "write", "x", 3) as call:    # an exception escaping here marks the op `info`
        await api.put("x", 3)
        call.ok()
    op = h.invoke("c2", "read", "x")                 # or the explicit form
    h.ok(op, await api.get("x"))
    result = check(h, KeySpace(Register()))
    assert result.ok, result                         # str(result) explains a violation

Outcomes: `ok` (took effect, with the observed result), `fail` (definitely did not take effect: dropped
before checking), `info` (timed out, connection broke: may take effect at any time after its invocation,
or never). Operations still pending when the history is checked count as `info`.

The checker is Wing & Gong's search with Lowe's memoization, in the form Porcupine uses (Horn & Kroening,
"Faster linearizability checking via P-compositionality"): the history is split per key (linearizability
is compositional), each part becomes a list of call/return entries in time order, and a depth-first search
linearizes a pending call, removes its entries from the list and starts again from the front; meeting a
return entry means that op should have been linearized already, so the search backtracks. A cache of
(set of linearized ops, model state) prunes configurations already explored. An `info` op has no return
entry (its return is at infinity), so it never forces a backtrack and the search succeeds once every `ok`
op is placed: the `info` ops not placed by then are the ones that never took effect.

On top of that (each argued where it is done): info ops are tried after the ok ones and identical ones
only once, a configuration is also skipped when one with fewer info ops placed was explored, a legal read
is placed without trying alternatives, a model may rewrite its part before the search (`Model.prepare`;
the register resolves most info ops and refuses to overwrite a value some unplaced op read), and when the
search takes long a relaxation (info ops may take effect repeatedly) looks for a violation first. Design
note, with figures: docs/design/linearizability.md.
"""

from __future__ import annotations

import enum
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Generic, TypeVar

__all__ = [
    "UNSEEN",
    "Budget",
    "Call",
    "CheckResult",
    "History",
    "KeySpace",
    "Model",
    "Objects",
    "Operation",
    "Outcome",
    "PartitionResult",
    "Register",
    "Verdict",
    "check",
]


class Outcome(enum.Enum):
    OK = "ok"
    FAIL = "fail"
    INFO = "info"


@dataclass(frozen=True)
class Operation:
    """One client operation. `complete` is None while pending; an `info` op's is when the client gave up
    (kept for display: for checking, its return is at infinity). `arg` must be hashable when a model keeps
    it in its state (a register's written value)."""

    process: Hashable
    kind: str
    key: Hashable
    arg: Any
    invoke: float
    complete: float | None = None
    outcome: Outcome = Outcome.INFO
    result: Any = None
    id: int = 0
    # The op as recorded, when a model's `prepare` rewrote it: results show that one.
    source: Operation | None = field(default=None, compare=False, repr=False)

    def describe(self) -> str:
        args = ", ".join(repr(a) for a in (self.key, self.arg) if a is not None)
        done = "…" if self.complete is None else f"{self.complete:.6f}"
        if self.outcome is Outcome.OK and self.result is not None:
            seen = f" -> {self.result!r}"
        else:
            seen = f" {self.outcome.value}"
        return f"#{self.id} {self.process}: {self.kind}({args}){seen} [{self.invoke:.6f}, {done}]"


class History:
    """A recorder, safe from asyncio code and from threads: every event takes a lock for microseconds and
    reads the clock inside it, so recorded times are in the order the events were recorded."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._ops: list[Operation] = []

    def invoke(self, process: Hashable, kind: str, key: Hashable = None, arg: Any = None) -> int:
        """Records an invocation; returns the handle `ok`/`fail`/`info` take."""
        with self._lock:
            op_id = len(self._ops)
            self._ops.append(Operation(process, kind, key, arg, self._clock(), id=op_id))
            return op_id

    def ok(self, op: int, result: Any = None) -> None:
        self._complete(op, Outcome.OK, result)

    def fail(self, op: int) -> None:
        self._complete(op, Outcome.FAIL, None)

    def info(self, op: int) -> None:
        self._complete(op, Outcome.INFO, None)

    def _complete(self, op: int, outcome: Outcome, result: Any) -> None:
        with self._lock:
            cur = self._ops[op]
            if cur.complete is not None:
                raise ValueError(f"operation {cur.describe()} completed twice")
            self._ops[op] = Operation(
                cur.process, cur.kind, cur.key, cur.arg, cur.invoke, self._clock(), outcome, result, cur.id
            )

    @contextmanager
    def record(self, process: Hashable, kind: str, key: Hashable = None, arg: Any = None) -> Iterator[Call]:
        """Invokes an op for the body, which must complete it (`call.ok(result)` or `call.fail()`). An
        exception escaping the body before that marks it `info` (its effect is unknown) and propagates."""
        call = Call(self, self.invoke(process, kind, key, arg))
        try:
            yield call
        except BaseException:
            if not call.done:
                self.info(call.op)
            raise
        if not call.done:
            # Leaving without an outcome is a bug in the test: the recorder cannot guess the result.
            self.info(call.op)
            raise RuntimeError(f"operation {self.operations()[call.op].describe()} left without ok/fail/info")

    def operations(self) -> list[Operation]:
        """A snapshot; ops still pending are reported as `info` with no completion time."""
        with self._lock:
            return list(self._ops)

    def __len__(self) -> int:
        with self._lock:
            return len(self._ops)


class Call:
    """The handle `History.record` yields."""

    def __init__(self, history: History, op: int) -> None:
        self.history = history
        self.op = op
        self.done = False

    def ok(self, result: Any = None) -> None:
        self.history.ok(self.op, result)
        self.done = True

    def fail(self) -> None:
        self.history.fail(self.op)
        self.done = True

    def info(self) -> None:
        self.history.info(self.op)
        self.done = True


# --- models -------------------------------------------------------------------------------------------

S = TypeVar("S", bound=Hashable)


class Model(ABC, Generic[S]):
    """A sequential specification: `step(state, op) -> (ok, new_state)` on hashable, immutable states.

    For an `ok` op, `ok` says whether the op with its observed result is legal in `state`. For an `info` op
    (result unknown), `step` gives the state had it taken effect at this point; it should answer False
    where taking effect here would change nothing, since leaving the op out (always allowed) covers that
    and pruning keeps the search small.
    """

    @abstractmethod
    def init(self) -> S: ...

    @abstractmethod
    def step(self, state: S, op: Operation) -> tuple[bool, S]: ...

    def effect_free(self, op: Operation) -> bool:
        """True for an op that, as recorded, cannot change the state (a read, a cas that answered False).
        The `info` ones constrain nothing and are dropped before the search; an `ok` one that is legal
        where the search stands is placed there without trying alternatives (see _search)."""
        return False

    def describe_state(self, state: S) -> str:
        return repr(state)

    def prepare(self, ops: list[Operation]) -> tuple[Model[Any], list[Operation]]:
        """The model and ops to search for one part (its `ok` and `info` ops; `info` reads already dropped):
        a rewrite with the same linearizations that is cheaper to search. The search's costs are `info` ops,
        candidates from their invocation to the end (tried at every backtrack), and wrong guesses found
        late; a model that can prove an `info` op took effect by some time (give it that completion), that
        it can be left out (drop it), or that a step dooms every continuation (refuse it) saves most of
        them. The default searches the part as it is."""
        return self, ops

    def partition(self, ops: Sequence[Operation]) -> list[tuple[Hashable, Model[Any], list[Operation]]]:
        """Independent parts (label, model, ops): the history is linearizable iff every part is. A model of
        one object keeps the history whole and refuses one spanning several keys (wrap it in KeySpace)."""
        keys = {op.key for op in ops}
        if len(keys) > 1:
            raise ValueError(f"{type(self).__name__} models one object but the history has {len(keys)} keys; "
                             "use KeySpace(model)")
        return [(next(iter(keys), None), self, list(ops))]


def _unknown_kind(model: Model[Any], op: Operation) -> ValueError:
    return ValueError(f"{type(model).__name__} has no operation {op.kind!r} ({op.describe()})")


class Register(Model[Hashable]):
    """A register: `write(v)` (result ignored), `read() -> v` (`initial` before any write), and
    `cas((old, new)) -> bool`."""

    def __init__(self, initial: Hashable = None) -> None:
        self.initial = initial

    def init(self) -> Hashable:
        return self.initial

    def step(self, state: Hashable, op: Operation) -> tuple[bool, Hashable]:
        kind, known = op.kind, op.outcome is Outcome.OK
        if kind == "read":
            return (known and op.result == state), state
        if kind == "write":
            return True, op.arg
        if kind == "cas":
            old, new = op.arg
            if not known or op.result:
                return state == old, (new if state == old else state)
            return state != old, state
        raise _unknown_kind(self, op)

    def effect_free(self, op: Operation) -> bool:
        return op.kind == "read" or (op.kind == "cas" and op.outcome is Outcome.OK and not op.result)

    def prepare(self, ops: list[Operation]) -> tuple[Model[Any], list[Operation]]:
        """Rewrites resting on one fact: an op's legality depends on the state only through comparisons with
        read results and cas `old` values (the *observed* values).

        - A written value nobody observes behaves like any other such value: it becomes UNSEEN, so blind
          writes in different orders reach the same state and the cache merges them.
        - An `info` write of such a value can be left out (dropped) unless some cas failed: the unseen
          value may be why the register differed from that cas's `old`.
        - An `info` write (or cas) that alone writes an observed value must have taken effect before the
          first op that observed it completed: it becomes `ok` with that completion.
        - A value with one source (one writer, or the initial value with none) never comes back once
          overwritten, so the search may not leave it while an op that observed it is unplaced: the
          returned model counts those ops in its state (a count the placed ops determine, so the cache
          is not split) and refuses such a step, which is where a wrong order is caught early.
        """
        try:
            observed: set[Hashable] = set()
            first_seen: dict[Hashable, float] = {}
            writers: dict[Hashable, int] = {}
            cas_failed = False
            for op in ops:
                if op.kind == "write":
                    writers[op.arg] = writers.get(op.arg, 0) + 1
                elif op.kind == "cas":
                    old, new = op.arg
                    writers[new] = writers.get(new, 0) + 1
                    observed.add(old)
                    if op.outcome is Outcome.OK and not op.result:
                        cas_failed = True
                    elif op.outcome is Outcome.OK:
                        assert op.complete is not None
                        first_seen[old] = min(first_seen.get(old, op.complete), op.complete)
                elif op.kind == "read" and op.outcome is Outcome.OK:
                    assert op.complete is not None
                    observed.add(op.result)
                    first_seen[op.result] = min(first_seen.get(op.result, op.complete), op.complete)
            out: list[Operation] = []
            for op in ops:
                if op.kind in ("write", "cas"):
                    value = op.arg if op.kind == "write" else op.arg[1]
                    if value == self.initial:
                        pass
                    elif value not in observed:
                        if op.outcome is Outcome.INFO and not cas_failed:
                            continue
                        arg = UNSEEN if op.kind == "write" else (op.arg[0], UNSEEN)
                        op = replace(op, arg=arg, source=op.source or op)
                    elif op.outcome is Outcome.INFO and writers[value] == 1 and value in first_seen:
                        op = replace(op, complete=max(op.invoke, first_seen[value]), outcome=Outcome.OK,
                                     result=True if op.kind == "cas" else None, source=op.source or op)
                out.append(op)
            # Observers after the rewrites (a resolved cas now observes its `old`), of single-source values.
            watchers: dict[Hashable, int] = {}
            for op in out:
                if op.outcome is not Outcome.OK or not (op.kind == "read" or (op.kind == "cas" and op.result)):
                    continue
                value = op.result if op.kind == "read" else op.arg[0]
                if writers.get(value, 0) + (value == self.initial) == 1:
                    watchers[value] = watchers.get(value, 0) + 1
            return _WatchedRegister(self.initial, watchers), out
        except TypeError:  # an unhashable value: check the history as it is
            return self, ops


class _WatchedRegister(Model[tuple[Hashable, int]]):
    """Register.prepare's model: the state is (value, unplaced ops that observed it, when it has a single
    source); leaving a value while that count is positive is refused."""

    def __init__(self, initial: Hashable, watchers: dict[Hashable, int]) -> None:
        self.initial = initial
        self.watchers = watchers

    def init(self) -> tuple[Hashable, int]:
        return self.initial, self.watchers.get(self.initial, 0)

    def step(self, state: tuple[Hashable, int], op: Operation) -> tuple[bool, tuple[Hashable, int]]:
        value, waiting = state
        kind, known = op.kind, op.outcome is Outcome.OK
        if kind == "read":
            if known and op.result == value:
                return True, (value, waiting - 1 if waiting else 0)
            return False, state
        if kind == "write":
            return waiting == 0, (op.arg, self.watchers.get(op.arg, 0))
        if kind == "cas":
            old, new = op.arg
            if not known or op.result:
                # An ok cas from `value` is itself one of its observers; an info one is not.
                if value == old and waiting <= (1 if known else 0):
                    return True, (new, self.watchers.get(new, 0))
                return False, state
            return value != old, state
        raise _unknown_kind(self, op)

    def effect_free(self, op: Operation) -> bool:
        # A read lowers the count, but placing it earlier only relaxes the refusals, so forcing it is sound.
        return op.kind == "read" or (op.kind == "cas" and op.outcome is Outcome.OK and not op.result)

    def describe_state(self, state: tuple[Hashable, int]) -> str:
        return repr(state[0])


class _Unseen:
    """The value every unobserved written value is replaced by (see Register.prepare)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<unseen>"


UNSEEN: Hashable = _Unseen()


class Objects(Model[Hashable]):
    """Named objects with the Docker API's existence rules, one name per key. State: None (absent) or the
    object's value (a version, a label: whatever the test can read back).

    - `create(value=True) -> bool`: True if it was created; False (a conflict) only if it existed.
    - `delete() -> bool`: True if it was deleted; False (not found) only if it was absent.
    - `read() -> None | value`: None if absent.
    - `update((old, new)) -> bool`: True if present with value `old` (now `new`); False (out of sequence, or
      absent) otherwise.
    """

    def init(self) -> Hashable:
        return None

    def step(self, state: Hashable, op: Operation) -> tuple[bool, Hashable]:
        kind, known = op.kind, op.outcome is Outcome.OK
        if kind == "read":
            return (known and op.result == state), state
        if kind == "create":
            if not known or op.result:
                return state is None, (True if op.arg is None else op.arg)
            return state is not None, state
        if kind == "delete":
            if not known or op.result:
                return state is not None, None
            return state is None, state
        if kind == "update":
            old, new = op.arg
            applies = state is not None and state == old
            if not known or op.result:
                return applies, (new if applies else state)
            return not applies, state
        raise _unknown_kind(self, op)

    def effect_free(self, op: Operation) -> bool:
        # conflicts, not-founds and out-of-sequence answers change nothing either
        return op.kind == "read" or (op.outcome is Outcome.OK and op.result is False)


class KeySpace(Model[frozenset[tuple[Hashable, Hashable]]]):
    """Independent objects, one per key, each following `inner`. The checker splits the history per key
    (`partition`), which is what keeps it fast; the whole-space state (a frozen mapping, keys at their
    initial state left out so equal spaces compare equal) is for checking unsplit."""

    def __init__(self, inner: Model[Any], per_key: dict[Hashable, Model[Any]] | None = None) -> None:
        self.inner = inner
        # Models of particular keys (given, e.g. a register among objects; or specialised by `prepare`).
        self.per_key = {} if per_key is None else per_key

    def init(self) -> frozenset[tuple[Hashable, Hashable]]:
        return frozenset()

    def step(
        self, state: frozenset[tuple[Hashable, Hashable]], op: Operation
    ) -> tuple[bool, frozenset[tuple[Hashable, Hashable]]]:
        values = dict(state)
        model = self.per_key.get(op.key, self.inner)
        initial = model.init()
        ok, new = model.step(values.get(op.key, initial), op)
        if not ok:
            return False, state
        if new == initial:
            values.pop(op.key, None)
        else:
            values[op.key] = new
        return True, frozenset(values.items())

    def effect_free(self, op: Operation) -> bool:
        return self.per_key.get(op.key, self.inner).effect_free(op)

    def prepare(self, ops: list[Operation]) -> tuple[Model[Any], list[Operation]]:
        per_key: dict[Hashable, Model[Any]] = {}
        out: list[Operation] = []
        for key, model, part in self.partition(ops):
            per_key[key], prepared = model.prepare(part)
            out += prepared
        return KeySpace(self.inner, per_key), out

    def describe_state(self, state: frozenset[tuple[Hashable, Hashable]]) -> str:
        return "{" + ", ".join(f"{k!r}: {self.per_key.get(k, self.inner).describe_state(v)}" for k, v in state) + "}"

    def partition(self, ops: Sequence[Operation]) -> list[tuple[Hashable, Model[Any], list[Operation]]]:
        parts: dict[Hashable, list[Operation]] = {}
        for op in ops:
            parts.setdefault(op.key, []).append(op)
        return [(key, self.per_key.get(key, self.inner), part) for key, part in parts.items()]


# --- the checker ----------------------------------------------------------------------------------------


class Verdict(enum.Enum):
    LINEARIZABLE = "linearizable"
    VIOLATION = "not linearizable"
    UNKNOWN = "unknown (budget exhausted)"


@dataclass(frozen=True)
class Budget:
    """Bounds on one `check` call, over all its parts: model steps and wall-clock seconds. Exhausting
    either gives UNKNOWN rather than a hang (the search is exponential in the worst case)."""

    max_steps: int | None = 10_000_000
    max_seconds: float | None = 30.0


@dataclass(frozen=True)
class PartitionResult:
    """The verdict for one key. On VIOLATION (and UNKNOWN), `linearization` is the longest linearizable
    prefix found, `state` the model state after it, `stuck` the op that had to be placed next (it
    completed before any remaining op could be linearized) and `candidates` the pending ops tried there."""

    key: Hashable
    verdict: Verdict
    ops: int
    steps: int
    linearization: tuple[Operation, ...] = ()
    state: str = ""
    stuck: Operation | None = None
    candidates: tuple[Operation, ...] = ()
    note: str = ""

    def explain(self, max_ops: int = 12) -> str:
        lines = [f"key {self.key!r}: {self.verdict.value} ({self.ops} ops, {self.steps} steps)"]
        if self.verdict is Verdict.LINEARIZABLE:
            return lines[0]
        if self.note:
            lines.append(f"  ({self.note})")
        if self.linearization or self.stuck is not None:
            shown = self.linearization[-max_ops:]
            lines.append(f"  longest linearizable prefix: {len(self.linearization)} of {self.ops} ops"
                         + (f" (last {len(shown)})" if len(shown) < len(self.linearization) else "") + ":")
            lines += [f"    {op.describe()}" for op in shown]
            lines.append(f"  state after it: {self.state}")
        if self.stuck is not None:
            lines.append(f"  could not place: {self.stuck.describe()}")
            others = [op for op in self.candidates if op is not self.stuck]
            if others:
                lines.append("  nor any of the other ops pending then:")
                lines += [f"    {op.describe()}" for op in others[:max_ops]]
                if len(others) > max_ops:
                    lines.append(f"    … {len(others) - max_ops} more")
        return "\n".join(lines)


@dataclass(frozen=True)
class CheckResult:
    verdict: Verdict
    partitions: tuple[PartitionResult, ...]
    steps: int
    seconds: float
    failures: tuple[PartitionResult, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return self.verdict is Verdict.LINEARIZABLE

    @property
    def unknown(self) -> bool:
        return self.verdict is Verdict.UNKNOWN

    def explain(self, max_ops: int = 12) -> str:
        head = (f"{self.verdict.value}: {len(self.partitions)} keys, "
                f"{sum(p.ops for p in self.partitions)} ops, {self.steps} steps, {self.seconds:.3f} s")
        return "\n".join([head] + [p.explain(max_ops) for p in self.failures])

    def __str__(self) -> str:
        return self.explain()


def check(
    history: History | Iterable[Operation],
    model: Model[Any],
    *,
    budget: Budget | None = None,
    partition: bool = True,
) -> CheckResult:
    """Is `history` linearizable with respect to `model`? `partition=False` checks it unsplit (slower; the
    same answer for a correct partition function)."""
    budget = Budget() if budget is None else budget
    started = time.monotonic()
    deadline = None if budget.max_seconds is None else started + budget.max_seconds
    ops = history.operations() if isinstance(history, History) else list(history)
    parts = model.partition(ops) if partition else [(None, model, ops)]

    results: list[PartitionResult | None] = [None] * len(parts)
    steps = 0
    # Smallest parts first: one pathological key exhausting the budget leaves definite answers for the rest.
    for index in sorted(range(len(parts)), key=lambda i: len(parts[i][2])):
        label, part_model, part_ops = parts[index]
        left = None if budget.max_steps is None else budget.max_steps - steps
        result = _check_part(label, part_model, part_ops, left, deadline)
        steps += result.steps
        results[index] = result
    done = tuple(r for r in results if r is not None)
    failures = tuple(r for r in done if r.verdict is not Verdict.LINEARIZABLE)
    if any(r.verdict is Verdict.VIOLATION for r in failures):
        verdict = Verdict.VIOLATION
        failures = tuple(r for r in failures if r.verdict is Verdict.VIOLATION)
    elif failures:
        verdict = Verdict.UNKNOWN
    else:
        verdict = Verdict.LINEARIZABLE
    return CheckResult(verdict, done, steps, time.monotonic() - started, failures)


_DEADLINE_EVERY = 1024  # steps between clock reads: the clock costs more than a model step
_EXPLAIN_STEPS = 20_000  # for re-searching a violation as recorded, to explain it (see _check_part)
_FIRST_STEPS, _FIRST_STEPS_PER_OP = 50_000, 20  # the exact search's budget before the relaxed one is tried
_RELAXED_NOTE = "found letting timed-out ops take effect more than once, so a violation either way"
_MAIN, _INFO = 0, 1  # the search's candidate stages: the ok calls, then the info calls


class _Frame:
    """One placement on the search path; frames link to their parent, so the deepest path seen so far is
    kept by holding its top frame (copying the path at every new depth would be quadratic)."""

    __slots__ = ("bound", "depth", "forced", "info_lin", "ok_lin", "parent", "pos", "stage", "state")

    def __init__(
        self,
        pos: int,
        state: Any,
        ok_lin: int,
        info_lin: int,
        bound: int,
        stage: int,
        forced: bool,
        parent: _Frame | None,
    ) -> None:
        self.pos, self.state, self.ok_lin, self.info_lin = pos, state, ok_lin, info_lin
        self.bound, self.stage, self.forced, self.parent = bound, stage, forced, parent
        self.depth: int = 1 if parent is None else parent.depth + 1


def _check_part(
    label: Hashable,
    model: Model[Any],
    raw: Sequence[Operation],
    max_steps: int | None,
    deadline: float | None,
) -> PartitionResult:
    # `fail` ops never happened; `info` ops that cannot change the state (reads) can always be left out.
    live = [op for op in raw if op.outcome is Outcome.OK or (op.outcome is Outcome.INFO and not model.effect_free(op))]
    prepared, ops = model.prepare(live)
    spent = 0

    def left(cap: int | None = None) -> int | None:
        total = None if max_steps is None else max_steps - spent
        return cap if total is None else total if cap is None else min(cap, total)

    # A violation is only known once every order was tried, and unresolved info ops multiply the orders
    # (which of them were used so far). So when the search takes long, try the relaxation that lets info
    # ops take effect repeatedly: it rejects most violations in a fraction of the steps; otherwise resume.
    has_info = any(op.outcome is Outcome.INFO for op in ops)
    slice_ = left(_FIRST_STEPS + _FIRST_STEPS_PER_OP * len(ops)) if has_info else left()
    first = _search(label, prepared, ops, slice_, deadline)
    spent += first.steps
    result = first
    if first.verdict is Verdict.UNKNOWN and has_info and left() != 0:
        relaxed = _search(label, prepared, ops, left(), deadline, reuse_info=True)
        spent += relaxed.steps
        if relaxed.verdict is Verdict.VIOLATION:
            result = replace(relaxed, note=_RELAXED_NOTE)
        elif left() != 0:
            result = _search(label, prepared, ops, left(), deadline)
            spent += result.steps
    result = replace(result, ops=len(live), steps=spent)
    if result.verdict is not Verdict.VIOLATION or prepared is model:
        return result
    # A prepared model finds a wrong order early, so its longest prefix stops where a value was about to be
    # overwritten, not where the read that saw it failed. The history as recorded explains better, when a
    # plain search can show it within a small budget.
    plain = _search(label, model, live, left(_EXPLAIN_STEPS), deadline)
    spent += plain.steps
    return replace(plain if plain.verdict is Verdict.VIOLATION else result, ops=len(live), steps=spent)


def _search(
    label: Hashable,
    model: Model[Any],
    ops: Sequence[Operation],
    max_steps: int | None,
    deadline: float | None,
    reuse_info: bool = False,
) -> PartitionResult:
    """The search over one part. With `reuse_info`, an info op placed stays a candidate (it may take effect
    any number of times): a relaxation, so its VIOLATION holds for the history too, and one with far
    fewer configurations, since which info ops were used no longer tells them apart."""
    n = len(ops)
    if (max_steps is not None and max_steps <= 0) or (deadline is not None and time.monotonic() > deadline):
        return PartitionResult(label, Verdict.UNKNOWN, n, 0)

    # Entries in time order; at equal times calls come first, so touching intervals count as concurrent
    # (a monotonic clock may give two events the same reading). Positions 1..E follow that order, so
    # comparing positions compares times. `ok` ops' calls and returns form the main list (head 0);
    # `info` ops' calls, which have no return, a second list (head E+1).
    events: list[tuple[float, int, int]] = []
    for i, op in enumerate(ops):
        if op.outcome is Outcome.OK:
            if op.complete is None or op.complete < op.invoke:
                raise ValueError(f"ok operation with a bad completion time: {op.describe()}")
            events.append((op.complete, 1, i))
        events.append((op.invoke, 0, i))
    events.sort()
    size = len(events) + 2
    main_head, info_head = 0, size - 1
    nxt = [-1] * size
    prv = [-1] * size
    ent_op = [-1] * size
    is_call = [False] * size
    ret_pos = [-1] * n
    tails = {main_head: main_head, info_head: info_head}
    is_info = [op.outcome is Outcome.INFO for op in ops]
    for pos, (_, kind, i) in enumerate(events, start=1):
        ent_op[pos] = i
        is_call[pos] = kind == 0
        if kind == 1:
            ret_pos[i] = pos
        head = info_head if is_info[i] else main_head
        nxt[tails[head]], prv[pos] = pos, tails[head]
        tails[head] = pos

    # Linearized sets are bitsets, `ok` and `info` ops numbered apart (see the cache below).
    bit = [0] * n
    counts = [0, 0]
    for i in range(n):
        bit[i] = 1 << counts[is_info[i]]
        counts[is_info[i]] += 1
    remaining = counts[0]  # ok ops not yet linearized
    # A legal effect-free op (a read) is placed without trying alternatives: moving it to the front of any
    # valid continuation keeps that continuation valid (everything that must precede it is placed already,
    # and it changes no state). A partial-order reduction, and what keeps read-heavy histories linear.
    forced_op = [not is_info[i] and model.effect_free(ops[i]) for i in range(n)]
    # Identical info ops are interchangeable (no return time, the same effect): when an earlier twin is
    # still unplaced, it is a candidate wherever this one is, so trying this one too would only repeat it.
    twin = [-1] * n
    last_of: dict[tuple[str, Hashable, Any], int] = {}
    p = nxt[info_head]
    while p >= 0:
        i = ent_op[p]
        try:
            like = (ops[i].kind, ops[i].key, ops[i].arg)
            twin[i] = last_of.get(like, -1)
            last_of[like] = i
        except TypeError:  # an unhashable argument: no twins
            pass
        p = nxt[p]

    step = model.step
    state: Any = model.init()
    ok_lin = info_lin = 0
    # Lowe's memoization, with a dominance twist for `info` ops: a configuration (ok ops placed, info ops
    # placed, state) can be skipped when one with the same ok ops and state but a subset of those info ops
    # was explored, since the info ops can always be left out. Keyed by (ok set, state) -> info sets.
    seen: dict[tuple[int, Any], list[int]] = {}
    top: _Frame | None = None
    steps = 0
    best: tuple[_Frame | None, Any, int] | None = None  # deepest stuck point: (top, state, stuck op)

    def first_return() -> int:
        p = nxt[main_head]
        while is_call[p]:  # an ok op is pending, so a return lies ahead
            p = nxt[p]
        return p

    # At each configuration the candidates are the calls before the main list's first return (`bound`):
    # the ok calls in invocation order, then the info calls invoked before `bound`. Any order finds a
    # linearization if there is one; trying info ops last finds it with less backtracking.
    verdict = Verdict.LINEARIZABLE
    stage = _MAIN
    bound = first_return() if remaining else -1
    pos = nxt[main_head]
    while remaining:
        if stage == _MAIN:
            if pos == bound:
                stage, pos = _INFO, nxt[info_head]
                continue
        stuck = False
        if stage == _INFO and (pos < 0 or pos > bound):
            # Stuck: the op returning at `bound` cannot be placed from here.
            depth = 0 if top is None else top.depth
            if best is None or depth > (0 if best[0] is None else best[0].depth):
                best = (top, state, ent_op[bound])
            stuck = True
        else:
            i = ent_op[pos]
            if stage == _INFO and twin[i] >= 0 and not info_lin & bit[twin[i]]:
                pos = nxt[pos]
                continue
            steps += 1
            if (max_steps is not None and steps > max_steps) or (
                deadline is not None and steps % _DEADLINE_EVERY == 0 and time.monotonic() > deadline
            ):
                steps -= 1
                verdict = Verdict.UNKNOWN
                break
            legal, new_state = step(state, ops[i])
            if legal:
                if is_info[i]:
                    new_ok, new_info = ok_lin, (info_lin if reuse_info else info_lin | bit[i])
                else:
                    new_ok, new_info = ok_lin | bit[i], info_lin
                key = (new_ok, new_state)
                known = seen.get(key)
                if known is None:
                    seen[key] = [new_info]
                    fresh = True
                else:
                    fresh = not any(old | new_info == new_info for old in known)
                    if fresh:
                        known.append(new_info)
                if fresh:
                    top = _Frame(pos, state, ok_lin, info_lin, bound, stage, forced_op[i], top)
                    state, ok_lin, info_lin = new_state, new_ok, new_info
                    if reuse_info and is_info[i]:  # it stays a candidate
                        stage, bound, pos = _MAIN, first_return(), nxt[main_head]
                        continue
                    # Lift the call entry, then the return entry.
                    p, q = prv[pos], nxt[pos]
                    nxt[p] = q
                    if q >= 0:
                        prv[q] = p
                    r = ret_pos[i]
                    if r >= 0:
                        p, q = prv[r], nxt[r]
                        nxt[p] = q
                        if q >= 0:
                            prv[q] = p
                        remaining -= 1
                        if not remaining:
                            break
                    stage, bound, pos = _MAIN, first_return(), nxt[main_head]
                    continue
                stuck = forced_op[i]  # its only continuation was explored: so was this configuration's
        if stuck:
            while True:  # backtrack, past forced placements
                if top is None:
                    verdict = Verdict.VIOLATION
                    break
                frame, top = top, top.parent
                pos, state, ok_lin, info_lin = frame.pos, frame.state, frame.ok_lin, frame.info_lin
                bound, stage = frame.bound, frame.stage
                i = ent_op[pos]
                r = ret_pos[i]
                if r >= 0:  # put back the return entry, then the call entry: the reverse of lifting
                    nxt[prv[r]] = r
                    if nxt[r] >= 0:
                        prv[nxt[r]] = r
                    remaining += 1
                if not (reuse_info and is_info[i]):
                    nxt[prv[pos]] = pos
                    if nxt[pos] >= 0:
                        prv[nxt[pos]] = pos
                if not frame.forced:
                    break
            if verdict is Verdict.VIOLATION:
                break
        pos = nxt[pos]  # the next candidate at this configuration

    placed: list[int] = []
    frame_at, end_state, stuck_op = (top, state, -1) if verdict is Verdict.LINEARIZABLE or best is None else best
    f = frame_at
    while f is not None:
        placed.append(ent_op[f.pos])
        f = f.parent
    placed.reverse()
    shown = [op.source or op for op in ops]  # as recorded, not as `prepare` rewrote them
    order = tuple(shown[i] for i in placed)
    if verdict is Verdict.LINEARIZABLE:
        return PartitionResult(label, verdict, n, steps, order, model.describe_state(end_state))
    candidates: tuple[Operation, ...] = ()
    if stuck_op >= 0:
        # Ops invoked before the stuck op completed and not in the prefix: what could have come next.
        done = set(placed)
        limit = ops[stuck_op].complete
        assert limit is not None
        candidates = tuple(shown[i] for i in range(n) if ops[i].invoke <= limit and i not in done)
    return PartitionResult(
        label,
        verdict,
        n,
        steps,
        order,
        model.describe_state(end_state),
        shown[stuck_op] if stuck_op >= 0 else None,
        candidates,
    )
