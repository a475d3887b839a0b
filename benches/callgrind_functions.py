#!/usr/bin/env python3
"""Whole functions' instruction counts from a callgrind profile (benches/callgrind-wshub.sh).

callgrind_annotate splits a function by the source file of the code inlined into it, which
scatters one function's calls over several lines; this sums them per function. It prints the
program total, then for each function whose name matches PATTERN (a regular expression): its own
instructions, its inclusive instructions (with everything it calls) and its callees by cost.

    python3 benches/callgrind_functions.py callgrind.out 'wshub::history'

Room history's own cost on a fixed workload (BENCHMARKS.md, "Room history") is the inclusive
cost of `History::append` minus its call to `Relay::serialise_within` (the event's JSON, made
with history off too), plus `History::position` and `History::handle_timeout`.
"""

import collections
import re
import sys

# Cost lines start with a position (a number, or +N/-N/* when compressed); the cost follows.
COST_LINE = re.compile(r"^[0-9+*-]")


def parse(path):
    """(self cost per function, {caller: {callee: inclusive cost}}, program total)."""
    names = {}
    self_cost = collections.Counter()
    calls = collections.defaultdict(collections.Counter)
    function = callee = pending_call = None
    total = 0

    def name(kind, spec):
        # "(id) name" defines a compressed name, "(id)" refers to one, a plain name is itself.
        match = re.match(r"\((\d+)\)(?: (.*))?$", spec)
        if not match:
            return spec
        if match.group(2) is not None:
            names[(kind, match.group(1))] = match.group(2)
        return names[(kind, match.group(1))]

    with open(path) as profile:
        for line in profile:
            line = line.rstrip("\n")
            if line.startswith("fn="):
                function = name("fn", line[3:])
            elif line.startswith("cfn="):
                callee = name("fn", line[4:])
            elif line.startswith(("cfi=", "cfl=")):
                name("fl", line[4:])
            elif line.startswith(("fl=", "fi=", "fe=")):
                name("fl", line[3:])
            elif line.startswith("calls="):
                pending_call = callee
            elif COST_LINE.match(line):
                fields = line.split()
                if len(fields) < 2:
                    continue
                cost = int(fields[1])
                if pending_call is not None:
                    calls[function][pending_call] += cost
                    pending_call = None
                else:
                    self_cost[function] += cost
                    total += cost
    return self_cost, calls, total


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    self_cost, calls, total = parse(sys.argv[1])
    pattern = re.compile(sys.argv[2])
    print(f"program total {total:,}")
    for function in sorted(set(self_cost) | set(calls)):
        if not pattern.search(function):
            continue
        inclusive = self_cost[function] + sum(calls[function].values())
        print(f"{function}: self {self_cost[function]:,}, inclusive {inclusive:,} "
              f"({100 * inclusive / total:.2f} %)")
        for called, cost in calls[function].most_common(10):
            print(f"    -> {called}: {cost:,}")


if __name__ == "__main__":
    main()
