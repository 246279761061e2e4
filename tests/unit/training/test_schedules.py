"""training/schedules.py: pure arithmetic, tested without torch state."""

from __future__ import annotations

import itertools
import math

import pytest

from modelport.training import schedules as s
from modelport.training.spec import ScheduleSpec


def test_step_multistep_exponential() -> None:
    assert s.step(0.0, base_lr=1.0, step_size=2, gamma=0.5) == 1.0
    assert s.step(1.99, base_lr=1.0, step_size=2, gamma=0.5) == 1.0
    assert s.step(2.0, base_lr=1.0, step_size=2, gamma=0.5) == 0.5
    assert s.multistep(4.5, base_lr=1.0, milestones=[3, 5], gamma=0.1) == pytest.approx(0.1)
    assert s.multistep(5.0, base_lr=1.0, milestones=[5, 3], gamma=0.1) == pytest.approx(0.01)
    assert s.exponential(0.9, base_lr=1.0, gamma=0.9) == 1.0
    assert s.exponential(3.2, base_lr=1.0, gamma=0.9) == pytest.approx(0.729)


def test_cosine_with_warmup() -> None:
    kw = {"base_lr": 1.0, "warmup": 1.0, "total": 11.0, "min_lr": 0.1}
    assert s.cosine(0.5, **kw) == pytest.approx(0.5)
    assert s.cosine(1.0, **kw) == pytest.approx(1.0)
    assert s.cosine(6.0, **kw) == pytest.approx(0.55)
    assert s.cosine(11.0, **kw) == pytest.approx(0.1)
    assert s.cosine(20.0, **kw) == pytest.approx(0.1)
    assert 0 < s.cosine(0.0, **kw) < 0.01


def test_linear_warmup_holds_after() -> None:
    assert s.linear_warmup(0.25, base_lr=2.0, warmup=1.0) == pytest.approx(0.5)
    assert s.linear_warmup(3.0, base_lr=2.0, warmup=1.0) == 2.0
    assert s.linear_warmup(0.0, base_lr=2.0, warmup=0.0) == 2.0


def test_cyclic_modes() -> None:
    kw = {"base_lr": 0.1, "max_lr": 1.1, "step_size": 2.0}
    assert s.cyclic(0.0, **kw) == pytest.approx(0.1)
    assert s.cyclic(2.0, **kw) == pytest.approx(1.1)
    assert s.cyclic(4.0, **kw) == pytest.approx(0.1)
    assert s.cyclic(6.0, **kw, mode="triangular2") == pytest.approx(0.6)
    assert s.cyclic(2.0, **kw, mode="exp_range", gamma=0.5) == pytest.approx(0.1 + 0.25)


def test_one_cycle_matches_torch_shape() -> None:
    kw = {"max_lr": 1.0, "total": 10.0, "pct_start": 0.3, "div_factor": 25.0, "final_div_factor": 1e4}
    assert s.one_cycle(0.0, **kw) == pytest.approx(0.04)
    assert s.one_cycle(3.0, **kw) == pytest.approx(1.0)
    assert s.one_cycle(10.0, **kw) == pytest.approx(0.04 / 1e4)
    values = [s.one_cycle(t / 10, **kw) for t in range(101)]
    peak = values.index(max(values))
    assert all(a <= b for a, b in itertools.pairwise(values[: peak + 1]))
    assert all(a >= b for a, b in itertools.pairwise(values[peak:]))


def test_reduce_on_plateau_and_its_state() -> None:
    p = s.ReduceOnPlateau(mode="min", factor=0.5, patience=1)
    scales = [p.update(v) for v in [1.0, 0.9, 0.95, 0.95, 0.95, 0.95]]
    assert scales == [1.0, 1.0, 1.0, 0.5, 0.5, 0.25]
    again = s.ReduceOnPlateau.from_state(p.state())
    assert again == p and again.update(0.1) == 0.25 and again.bad_epochs == 0
    floor = s.ReduceOnPlateau(mode="max", factor=0.1, patience=0, min_scale=0.05)
    assert [floor.update(v) for v in [1.0, 0.5, 0.5]] == [1.0, 0.1, 0.05]


def test_batch_size_schedule() -> None:
    assert s.batch_size_at(7, 32) == 32
    sizes = {0: 32, 3: 64, 6: 128}
    assert [s.batch_size_at(e, sizes) for e in range(8)] == [32, 32, 32, 64, 64, 64, 128, 128]


@pytest.mark.parametrize(
    "name", ["constant", "step", "multistep", "exponential", "cosine", "warmup", "cyclic", "one_cycle"]
)
def test_every_spec_schedule_builds_and_stays_positive(name: str) -> None:
    extra = {"max_lr": 0.01} if name in ("cyclic", "one_cycle") else {}
    fn = s.make_lr_fn(ScheduleSpec.model_validate({"name": name, **extra}), base_lr=0.001, total=10.0)
    values = [fn(t / 4) for t in range(40)]  # the loop never reaches t == total
    assert all(v > 0 and math.isfinite(v) for v in values)


def test_apply_lr_sets_every_group() -> None:
    class Opt:
        def __init__(self) -> None:
            self.param_groups: list[dict[str, float]] = [{"lr": 1.0}, {"lr": 2.0}]

    opt = Opt()
    assert s.apply_lr(opt, 0.5) == 0.5
    assert [g["lr"] for g in opt.param_groups] == [0.5, 0.5]
