"""Times the linearizability checker on simulated client histories.

Run: python bench/linearizability.py [--quick]. `processes` sequential clients share the keys; each op takes
0.5-1.5 time units and takes effect at a uniform point of its interval, so the history is linearizable by
construction; a share of the non-reads time out (`info`), half of those having taken effect. A second
line per case mutates one read to a value never written (a violation) and times the rejection with its
explanation. Figures: docs/design/linearizability.md.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shoal.testing.linearizability import KeySpace, Model, Objects, Operation, Outcome, Register, check


def simulate(n: int, processes: int, keys: int, info: float, cas: float, objects: bool, seed: int) -> list[Operation]:
    rng = random.Random(seed)
    free_at = [rng.random() for _ in range(processes)]
    planned = []
    for k in range(n):
        p = min(range(processes), key=free_at.__getitem__)
        a = free_at[p]
        b = a + rng.uniform(0.5, 1.5)
        free_at[p] = b + rng.uniform(0, 0.2)
        roll = rng.random()
        if objects:  # presence only (create with the default value), the case prepare cannot help
            kind = "create" if roll < 0.3 else "delete" if roll < 0.5 else "read"
        else:
            kind = "write" if roll < 0.4 else "cas" if roll < 0.4 + cas else "read"
        planned.append((rng.uniform(a, b), a, b, p, kind, rng.randrange(keys), k + 1, rng.random() < info,
                        rng.random() < 0.5))
    state: dict[int, Any] = {}
    ops = []
    for _, a, b, p, kind, key, v, timed_out, applies in sorted(planned):
        cur = state.get(key)
        takes = applies or not timed_out
        arg: Any = None
        if kind == "read":
            result: Any = cur
            timed_out = False
        elif kind == "write":
            arg, result = v, None
            if takes:
                state[key] = v
        elif kind == "cas":
            arg = (cur if rng.random() < 0.5 else v - 1, v)
            result = cur == arg[0]
            if result and takes:
                state[key] = v
        elif kind == "create":
            result = cur is None
            if result and takes:
                state[key] = True
        else:
            result = cur is not None
            if result and takes:
                del state[key]
        outcome = Outcome.INFO if timed_out else Outcome.OK
        ops.append(Operation(p, kind, key, arg, a, None if timed_out else b, outcome, None if timed_out else result))
    ops.sort(key=lambda o: o.invoke)
    return [replace(o, id=i) for i, o in enumerate(ops)]


def _case(name: str, n: int, processes: int, keys: int, info: float = 0.05, cas: float = 0.0,
          objects: bool = False) -> list[dict[str, object]]:
    ops = simulate(n, processes, keys, info, cas, objects, seed=n + processes + keys)
    model: Model[Any] = KeySpace(Objects() if objects else Register())
    records = []
    for label, history in (("linearizable", ops), ("violation", _mutated(ops))):
        started = time.perf_counter()
        result = check(history, model)
        text = str(result)
        seconds = time.perf_counter() - started
        records.append({"case": name, "history": label, "ops": n, "processes": processes, "keys": keys,
                        "verdict": result.verdict.name, "steps": result.steps, "seconds": round(seconds, 4),
                        "explanation_lines": len(text.splitlines())})
    return records


def _mutated(ops: list[Operation]) -> list[Operation]:
    reads = [i for i, o in enumerate(ops) if o.kind == "read"]
    i = reads[len(reads) * 3 // 4]  # late in the history: the search has to get there first
    return [*ops[:i], replace(ops[i], result="never written"), *ops[i + 1:]]


CASES: list[tuple[str, dict[str, Any]]] = [
    ("register, 3 clients", {"n": 5000, "processes": 3, "keys": 1}),
    ("register, 10 clients", {"n": 5000, "processes": 10, "keys": 1}),
    ("register, 10 clients, 20% info", {"n": 5000, "processes": 10, "keys": 1, "info": 0.2}),
    ("register + cas, 5 clients", {"n": 5000, "processes": 5, "keys": 1, "cas": 0.3}),
    ("register, 20 clients, 10 keys", {"n": 20000, "processes": 20, "keys": 10}),
    ("objects (presence), 5 clients", {"n": 5000, "processes": 5, "keys": 1, "objects": True}),
    ("objects (presence), 10 clients, 5 keys", {"n": 5000, "processes": 10, "keys": 5, "objects": True}),
]


def run(quick: bool = False) -> list[dict[str, object]]:
    records: list[dict[str, object]] = []
    for name, kw in CASES:
        if quick:
            kw = {**kw, "n": kw["n"] // 10}
        records += _case(name, **kw)
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the ops")
    args = parser.parse_args()
    for rec in run(args.quick):
        print(f"{rec['case']:42s} {rec['history']:13s} {rec['ops']:6d} ops  {rec['verdict']:12s} "
              f"{rec['steps']:8d} steps  {float(str(rec['seconds'])) * 1000:8.1f} ms")


if __name__ == "__main__":
    from bench import procs

    with procs.guarded():  # SIGTERM, SIGHUP, Ctrl-C: the clean-up runs and nothing started is left
        main()
