from __future__ import annotations

from worker.validators.circuit import CircuitBreaker


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_failures_in_a_row_and_recovers_after_a_good_trial() -> None:
    clock = Clock()
    cb = CircuitBreaker(failures=3, cooldown_s=10, clock=clock)
    for _ in range(2):
        assert cb.allow("a")
        cb.record("a", answered=False)
    assert cb.state("a") == "closed"
    cb.record("a", answered=False)
    assert cb.state("a") == "open" and not cb.allow("a")
    assert cb.allow("b")  # per connector
    clock.now = 10
    assert cb.state("a") == "half_open"
    assert cb.allow("a") and not cb.allow("a")  # one trial at a time
    cb.record("a", answered=False)
    assert cb.state("a") == "open"  # the trial failed: another cooldown
    clock.now = 20
    assert cb.allow("a")
    cb.record("a", answered=True)
    assert cb.state("a") == "closed" and cb.allow("a")


def test_an_answer_resets_the_count() -> None:
    cb = CircuitBreaker(failures=2, cooldown_s=10, clock=Clock())
    cb.record("a", answered=False)
    cb.record("a", answered=True)
    cb.record("a", answered=False)
    assert cb.state("a") == "closed"
