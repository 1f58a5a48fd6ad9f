"""Loop.evaluates: the one resume condition of every training loop, and the loops use it."""

import ast
from pathlib import Path

import pytest

from mi_ref.loop import Loop

PACKAGE = Path(__file__).resolve().parent.parent / "mi_ref"
LOOPS = ("train.py", "experiments/adversarial.py", "experiments/sampling.py")


def fresh_loop(start=0, resumed=False, reevaluate=False):
    loop = Loop(None, "v", 0, 0)
    loop.start, loop.resumed, loop.reevaluate = start, resumed, reevaluate
    return loop


@pytest.mark.parametrize("scheduled", [True, False])
def test_a_fresh_loop_evaluates_exactly_on_schedule(scheduled):
    loop = fresh_loop()
    assert loop.evaluates(0, scheduled) is scheduled
    assert loop.evaluates(7, scheduled) is scheduled


def test_the_step_resumed_at_keeps_its_row_on_disk():
    loop = fresh_loop(start=100, resumed=True, reevaluate=False)
    assert not loop.evaluates(100, True)          # its row is on disk: evaluating again would duplicate it
    assert loop.evaluates(200, True)              # later steps follow the schedule
    assert not loop.evaluates(150, False)


def test_a_lost_row_is_evaluated_again_only_where_the_schedule_has_one():
    loop = fresh_loop(start=100, resumed=True, reevaluate=True)
    assert loop.evaluates(100, True)
    # the final state of a shorter run after a step without a row: evaluated only if this run's schedule
    # has a row there (a fresh run of this length has none)
    assert not loop.evaluates(100, False)


def test_no_loop_body_writes_the_resume_condition_itself():
    """The loops ask Loop.evaluates; none reads loop.resumed / loop.reevaluate to decide an evaluation."""
    for rel in LOOPS:
        tree = ast.parse((PACKAGE / rel).read_text(encoding="utf-8"))
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
                 and n.func.attr == "evaluates"]
        assert calls, f"{rel} does not decide its evaluations with Loop.evaluates"
        reads = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "reevaluate"]
        assert not reads, f"{rel} reads loop.reevaluate itself (lines {reads}): use Loop.evaluates"
        conditions = [n.lineno for n in ast.walk(tree) if isinstance(n, (ast.If, ast.IfExp, ast.BoolOp))
                      and any(isinstance(m, ast.Attribute) and m.attr == "start" for m in ast.walk(n))
                      and any(isinstance(m, ast.Attribute) and m.attr == "resumed" for m in ast.walk(n))]
        assert not conditions, f"{rel} compares a step with loop.start when resumed (lines {conditions})"
