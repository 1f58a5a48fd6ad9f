"""Tests for mi_ref.progress: a line at every evaluation and at least every interval, with the rate, the
variant k/N and the ETA of the whole run."""

import io

from mi_ref.progress import Progress, count, duration


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_lines_every_interval_with_rate_variant_and_run_eta():
    clock, out = Clock(), io.StringIO()
    bar = Progress("critics-quick seed 0", [100, 100, 100], stream=out, interval=30, clock=clock)
    bar.variant("bilinear-infonce", 0)
    for _ in range(70):                     # 2 steps per second: a line once 30 s have passed
        clock.t += 0.5
        bar.step()
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("[critics-quick seed 0] variant 1/3 bilinear-infonce: step 60/100 (2.0 steps/s)")
    assert lines[0].endswith("run 20%, ETA 2m00s")           # 240 steps left at 2 steps/s
    bar.variant("concat-nwj", 2, start=40)                    # a later variant, resumed at step 40
    clock.t += 1.0
    bar.evaluation(40, bound=1.5, acc=0.8)
    last = out.getvalue().splitlines()[-1]
    assert "variant 3/3 concat-nwj: step 40/100" in last and "bound 1.5000 acc 0.8000" in last and "run 80%" in last


def test_quiet_progress_prints_nothing():
    out = io.StringIO()
    bar = Progress("x", [10], enabled=False, stream=out)
    bar.variant("v", 0)
    bar.step()
    bar.evaluation(1, acc=0.5)
    assert out.getvalue() == ""


def test_duration():
    assert (duration(12.4), duration(281), duration(3725)) == ("12s", "4m41s", "1h02m")


def test_count_says_one_or_many():
    """Was "2 seed(s)" in the sweep's and reproduce's first lines."""
    assert (count(1, "seed"), count(2, "seed"), count(0, "unit")) == ("1 seed", "2 seeds", "0 units")
    assert count(2, "worker process", "worker processes") == "2 worker processes"


def test_heartbeat_at_each_variant_start_evaluation_and_every_beat_interval_even_when_quiet():
    clock, beats = Clock(), []
    bar = Progress("x", [100, 100], enabled=False, clock=clock, heartbeat=lambda v, s: beats.append((v, s)),
                   beat_interval=10)
    bar.variant("a", 0, start=20)                 # a resumed variant says where it starts at once
    assert beats == [("a", 20)]
    for _ in range(30):                           # 1 step per second: a beat once 10 s have passed
        clock.t += 1.0
        bar.step()
    assert beats == [("a", 20), ("a", 30), ("a", 40), ("a", 50)]
    bar.evaluation(50, acc=0.5)
    bar.variant("b", 1)
    assert beats[-2:] == [("a", 50), ("b", 0)]


def test_no_heartbeat_is_fine():
    bar = Progress("x", [10], enabled=False)
    bar.variant("v", 0)
    bar.step()
    bar.evaluation(1, acc=0.5)
