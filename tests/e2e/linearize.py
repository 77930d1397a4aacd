"""A linearizability checker for single-register histories (Wing and Gong's search with Lowe's
memoization): is there one order of the operations, each taking effect at one instant between
its call and its return, in which every read returned the value last written and every
compare-and-set found what it expected?

An operation is a dict: `kind` ("read", "write" or "cas"), `arg` (the value written, or
`(expected, new)` for a cas), `ret` (the value a read returned), `call` and `ret_at` (times; a
`ret_at` of None means its outcome is unknown, as for a request whose connection died: it may
have taken effect at any moment after its call, or never). Only successful compare-and-sets
belong in a history; one refused with a conflict changed nothing."""


def _apply(op, state):
    """The register after `op`, or None if `op` cannot take effect in `state`."""
    kind = op["kind"]
    if kind == "read":
        return state if op["ret"] == state else None
    if kind == "write":
        return op["arg"]
    expected, new = op["arg"]
    return new if state == expected else None


def check(history, initial):
    """Whether `history` is linearizable from the register holding `initial`. Returns
    (True, order) with one witness order of operation indexes, or (False, longest) with the
    longest prefix any order reached, to show where it went wrong."""
    ops = sorted(range(len(history)), key=lambda i: history[i]["call"])
    known = [i for i in ops if history[i]["ret_at"] is not None]
    full = 0
    for i in known:
        full |= 1 << i
    seen = set()
    stack = [(0, initial, ())]
    longest = ()
    while stack:
        done, state, order = stack.pop()
        if done & full == full:
            return True, list(order)
        if (done, state) in seen:
            continue
        seen.add((done, state))
        if len(order) > len(longest):
            longest = order
        # Whatever is linearized next was called before the earliest return still pending.
        horizon = min(history[i]["ret_at"] for i in known if not done & (1 << i))
        for i in ops:
            op = history[i]
            if op["call"] > horizon:
                break
            if done & (1 << i):
                continue
            after = _apply(op, state)
            if after is not None:
                stack.append((done | (1 << i), after, order + (i,)))
    return False, list(longest)
