"""Progress of a run, as plain lines on stderr: readable in a terminal, a log file and CI alike.

One :class:`Progress` per run (an experiment's seed). It knows the run's variants and their steps, so
every line says where the whole run stands::

    [conditioning-paper seed 0] variant 2/2 nwj: step 9000/21000 (42.7 steps/s) bound 3.21 acc 0.8512 | run 71%, ETA 4m41s

A line is printed at every evaluation and otherwise at least every ``interval`` seconds (30 by default),
never more than one at a time (no redrawn bars). The ETA covers the whole run: the steps left in this and
the following variants at the rate measured since the run (re)started.
"""

import sys
import time


def duration(seconds):
    """``1h02m``, ``4m41s`` or ``12s``."""
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def count(n, noun, plural=None):
    """``"1 seed"``, ``"2 seeds"`` (``plural``: the plural if not ``noun + "s"``)."""
    return f"{n} {noun if n == 1 else (plural or noun + 's')}"


class Progress:
    """Progress of one run: ``variant(name, index, steps, start)`` at the start of each variant, ``step()``
    after every training step, ``evaluation(step, **values)`` after every evaluation.

    ``steps_per_variant``: the steps of each of the run's variants, in order (their sum is the run's work).
    ``enabled=False`` prints nothing (``--quiet``); ``stream`` defaults to stderr; ``clock`` is for tests.
    ``heartbeat``: a function ``(variant, step)`` told where the training is at the start of each variant,
    after each evaluation and otherwise at least every ``beat_interval`` seconds, whether lines are printed
    or not (a sweep task's :meth:`mi_ref.results.RunDir.heartbeat`, read by the sweep's progress lines).
    """

    def __init__(self, label, steps_per_variant, enabled=True, stream=None, interval=30.0, clock=time.monotonic,
                 names=None, heartbeat=None, beat_interval=10.0):
        self.label, self.enabled, self.interval, self.clock = label, enabled, interval, clock
        self.heartbeat, self.beat_interval = heartbeat, beat_interval
        self.names = None if names is None else list(names)
        self.stream = stream or sys.stderr
        self.steps = list(steps_per_variant)
        self.total = sum(self.steps)
        self.variant_name, self.index, self.current, self.done_before = "", 0, 0, 0
        self.started = self.clock()
        self.steps_this_session = 0
        self.last_line = self.last_beat = self.started
        self._last_rate_mark = (self.started, 0)
        self.rate = None

    def variant(self, name, index, start=0):
        """Variant ``index`` (0-based) of the run begins, at step ``start`` (> 0 when resumed). With ``names``
        (the run trains only some of an experiment's variants, e.g. a sweep task) the position is looked up by
        ``name`` instead, so that "variant k/N" and the ETA count only what this run trains."""
        if self.names is not None and name in self.names:
            index = self.names.index(name)
        self.variant_name, self.index, self.current = name, index, start
        self.done_before = sum(self.steps[:index]) + start
        self._beat()

    def step(self, n=1):
        """``n`` training steps are done; prints a line if ``interval`` seconds passed since the last one."""
        self.current += n
        self.steps_this_session += n
        if self.enabled and self.clock() - self.last_line >= self.interval:
            self._print()
        if self.heartbeat is not None and self.clock() - self.last_beat >= self.beat_interval:
            self._beat()

    def evaluation(self, step, **values):
        """An evaluation at ``step`` is done: prints a line with its ``values`` (bound, accuracy, ...)."""
        self.current = step
        if self.enabled:
            self._print(values)
        self._beat()

    def _beat(self):
        if self.heartbeat is not None:
            self.heartbeat(self.variant_name, self.current)
            self.last_beat = self.clock()

    def _print(self, values=None):
        now = self.clock()
        mark_time, mark_steps = self._last_rate_mark
        if now > mark_time and self.steps_this_session > mark_steps:
            self.rate = (self.steps_this_session - mark_steps) / (now - mark_time)    # since the last line
            self._last_rate_mark = (now, self.steps_this_session)
        done = sum(self.steps[:self.index]) + self.current
        left = max(self.total - done, 0)
        average = self.steps_this_session / (now - self.started) if now > self.started else 0.0
        eta = duration(left / average) if average > 0 else "?"          # evaluations included in the average
        rate = f" ({self.rate:.1f} steps/s)" if self.rate else ""
        shown = " ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in (values or {}).items())
        n_variants = len(self.steps)
        steps_here = self.steps[self.index] if self.index < n_variants else 0
        line = (f"[{self.label}] variant {self.index + 1}/{n_variants} {self.variant_name}: step "
                f"{self.current}/{steps_here}{rate}{' ' + shown if shown else ''} | run "
                f"{100 * done // max(self.total, 1)}%, ETA {eta}")
        print(line, file=self.stream, flush=True)
        self.last_line = now


class Silent(Progress):
    """A :class:`Progress` that prints nothing (in-memory runs, tests)."""

    def __init__(self, steps_per_variant=(1,)):
        super().__init__("", steps_per_variant, enabled=False)
