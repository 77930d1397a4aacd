"""The HA test's linearizability checker on histories whose answer is known (no cluster)."""

import random

from linearize import check


def op(kind, call, ret_at, arg=None, ret=None):
    return {"kind": kind, "call": call, "ret_at": ret_at, "arg": arg, "ret": ret}


def test_sequential_history_is_linearizable():
    h = [op("write", 0, 1, "a"), op("read", 2, 3, ret="a"), op("cas", 4, 5, ("a", "b")), op("read", 6, 7, ret="b")]
    ok, order = check(h, "0")
    assert ok and order == [0, 1, 2, 3]


def test_a_stale_read_after_a_completed_write_is_not():
    h = [op("write", 0, 1, "a"), op("read", 2, 3, ret="0")]
    ok, _ = check(h, "0")
    assert not ok


def test_concurrent_operations_may_take_effect_in_either_order():
    # The read overlaps the write: it may see the old value or the new one.
    for seen in ("0", "a"):
        assert check([op("write", 0, 10, "a"), op("read", 1, 2, ret=seen)], "0")[0]
    assert not check([op("write", 0, 10, "a"), op("read", 1, 2, ret="z")], "0")[0]


def test_two_successful_cas_from_the_same_value_are_not():
    h = [op("cas", 0, 5, ("0", "a")), op("cas", 1, 6, ("0", "b"))]
    assert not check(h, "0")[0]


def test_an_unknown_outcome_may_have_happened_or_not():
    lost = op("write", 0, None, "a")
    assert check([lost, op("read", 5, 6, ret="a")], "0")[0]
    assert check([lost, op("read", 5, 6, ret="0")], "0")[0]
    # But not both, in this order.
    assert not check([lost, op("read", 5, 6, ret="a"), op("read", 7, 8, ret="0")], "0")[0]


def test_a_generated_correct_history_of_many_clients_passes():
    rng = random.Random(7)
    state, t, h = "0", 0.0, []
    for n in range(200):
        # Each operation takes effect at `t`; its call and return are spread around it, and
        # several overlap.
        call, ret_at = t - rng.random() * 3, t + rng.random() * 3
        if rng.random() < 0.5:
            h.append(op("read", call, ret_at, ret=state))
        else:
            h.append(op("cas", call, ret_at, (state, str(n))))
            state = str(n)
        t += 1.0
    assert check(h, "0")[0]
