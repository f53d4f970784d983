"""Interleaved timing rounds, one process per timed setting (shared by the benchmark scripts).

Each setting (a "side": one method in one precision / layout, or the official code) lives in
its own worker process, so that its peak resident set size is its own. The parent runs the
rounds: in round r every worker in turn runs `iters` iterations while the others wait, and the
order rotates by one from round to round, so that load from other processes on a shared
machine hits every side alike. Ratios are taken from these interleaved rounds.

A worker is a picklable factory `make(spec) -> Runner`; the runner's `step()` runs one
iteration and returns after any device work has finished, `info()` returns a dict of extra
values (e.g. the last loss) that the summary keeps.
"""

from __future__ import annotations

import multiprocessing as mp
import resource
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


class Runner(Protocol):
    """One timed setting inside its worker process."""

    def step(self) -> None:
        """Run one iteration (synchronised with the device)."""

    def info(self) -> dict[str, Any]:
        """Extra values for the summary (e.g. the last loss)."""


@dataclass
class SideResult:
    """What one side reported: per-round lists of iteration times (s), peak memory, info."""

    label: str
    rounds: list[list[float]] = field(default_factory=list)
    peak_mb: float = float("nan")
    info: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def peak_rss_mb() -> float:
    """The peak resident set size of this process in MiB (ru_maxrss: KiB on Linux)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


def log_stderr(text: str) -> None:
    """Progress lines go to stderr (stdout keeps the table and the JSON line)."""
    print(text, file=sys.stderr, flush=True)


def _worker(conn: Any, make: Callable[[Any], Runner], spec: Any, warmup: int) -> None:
    """Worker loop: build, warm up, then answer ("round", n) and ("done",) commands."""
    try:
        runner = make(spec)
        for _ in range(warmup):
            runner.step()
        conn.send(("ready", None))
    except BaseException:  # report any build failure to the parent, then stop
        conn.send(("error", traceback.format_exc()))
        return
    while True:
        cmd = conn.recv()
        if cmd[0] == "done":
            info = dict(runner.info())
            peak = info.pop("peak_mb", None)
            conn.send(("done", (peak if peak is not None else peak_rss_mb(), info)))
            return
        try:
            times = []
            for _ in range(cmd[1]):
                t0 = time.perf_counter()
                runner.step()
                times.append(time.perf_counter() - t0)
            conn.send(("times", times))
        except BaseException:
            conn.send(("error", traceback.format_exc()))
            return


def run_interleaved(
    sides: Sequence[tuple[str, Callable[[Any], Runner], Any]],
    *,
    rounds: int,
    iters: int,
    warmup: int,
    log: Callable[[str], None] = log_stderr,
) -> list[SideResult]:
    """Time every side of `sides` (label, factory, spec) in its own process, interleaved.

    The workers are started (and warmed up) one after the other, then `rounds` rounds of
    `iters` iterations each run with a rotating order. A side whose worker fails keeps its
    error text and is left out of the later rounds.
    """
    ctx = mp.get_context("spawn")
    results = [SideResult(label) for label, _, _ in sides]
    procs, conns = [], []
    try:
        for (label, make, spec), res in zip(sides, results, strict=True):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_worker, args=(child, make, spec, warmup), daemon=True)
            p.start()
            kind, payload = parent.recv()
            if kind == "error":
                res.error = payload
                log(f"[{label}] failed to start:\n{payload}")
            else:
                log(f"[{label}] ready")
            procs.append(p)
            conns.append(parent)
        for r in range(rounds):
            n = len(sides)
            for k in range(n):
                i = (k + r) % n
                if results[i].error is not None:
                    continue
                conns[i].send(("round", iters))
                kind, payload = conns[i].recv()
                if kind == "error":
                    results[i].error = payload
                    log(f"[{results[i].label}] failed in round {r}:\n{payload}")
                else:
                    results[i].rounds.append(payload)
            log(f"round {r + 1}/{rounds}: " + ", ".join(_round_line(res) for res in results))
        for conn, res in zip(conns, results, strict=True):
            if res.error is None:
                conn.send(("done",))
                _, (res.peak_mb, res.info) = conn.recv()
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
    return results


def _round_line(res: SideResult) -> str:
    if res.error is not None or not res.rounds:
        return f"{res.label} -"
    return f"{res.label} {1e3 * statistics.median(res.rounds[-1]):.0f} ms"


def summarize(res: SideResult) -> dict[str, Any]:
    """Median ms/iteration over all timed iterations, the spread of the per-round medians
    (min, max) and the number of rounds and iterations."""
    flat = [t for rnd in res.rounds for t in rnd]
    if res.error is not None or not flat:
        return {"label": res.label, "error": (res.error or "no timed iteration").strip()[-400:]}
    per_round = [statistics.median(rnd) for rnd in res.rounds if rnd]
    return {
        "label": res.label,
        "ms_median": round(1e3 * statistics.median(flat), 1),
        "ms_round_min": round(1e3 * min(per_round), 1),
        "ms_round_max": round(1e3 * max(per_round), 1),
        "rounds": len(per_round),
        "iters": len(flat),
        "peak_mb": round(res.peak_mb, 1),
        **res.info,
    }


def paired_ratio(num: SideResult, den: SideResult) -> dict[str, float] | None:
    """num/den time ratio: the median of the per-round ratios (each round's median iteration
    time), with their min and max; None when a side has no times."""
    pairs = [
        statistics.median(a) / statistics.median(b)
        for a, b in zip(num.rounds, den.rounds, strict=False)
        if a and b
    ]
    if not pairs:
        return None
    return {
        "ratio": round(statistics.median(pairs), 3),
        "min": round(min(pairs), 3),
        "max": round(max(pairs), 3),
    }


def peak_column() -> tuple[str, int, Callable[[dict[str, Any]], str]]:
    """The peak-memory column of `format_rows`."""
    return ("peak MB", 8, lambda r: f"{r['peak_mb']:.0f}")


def ratio_column(title: str, key: str, width: int) -> tuple[str, int, Callable]:
    """A `format_rows` column showing the paired ratio stored under `key`."""
    return (title, width, lambda r: ratio_text(r.get(key)))


def ratio_text(q: dict[str, float] | None) -> str:
    """`1.23x (1.10-1.40)` for a `paired_ratio` result, `-` for None."""
    return f"{q['ratio']:.2f}x ({q['min']:.2f}-{q['max']:.2f})" if q else "-"


def format_rows(
    rows: list[dict[str, Any]],
    name_key: str,
    name_width: int,
    columns: Sequence[tuple[str, int, Callable[[dict[str, Any]], str]]],
) -> str:
    """A plain-text table: the name, ms/iteration, the round spread, then `columns` as
    (title, width, row -> text); a row with an error shows its last line."""
    head = f"{name_key:<{name_width}} {'ms/iter':>8} {'rounds min..max':>17}"
    head += "".join(f" {title:>{width}}" for title, width, _ in columns)
    lines = [head, "-" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r[name_key]:<{name_width}} ERROR {r['error'].splitlines()[-1]}")
            continue
        spread = f"{r['ms_round_min']:.0f}..{r['ms_round_max']:.0f}"
        line = f"{r[name_key]:<{name_width}} {r['ms_median']:>8.1f} {spread:>17}"
        lines.append(line + "".join(f" {fn(r):>{width}}" for _, width, fn in columns))
    return "\n".join(lines)
