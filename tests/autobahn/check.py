#!/usr/bin/env python3
"""Judge an Autobahn|Testsuite fuzzingclient report (index.json).

Usage:
    check.py INDEX_JSON [--expect-cases FILE] [--agent NAME]

index.json, as written by `wstest -m fuzzingclient`, looks like
    {agent: {case_id: {"behavior": ..., "behaviorClose": ...,
                       "remoteCloseCode": ..., "duration": ...,
                       "reportfile": ...}}}

Values autobahntestsuite uses (autobahntestsuite/case/case.py):
    behavior:      OK, NON-STRICT, INFORMATIONAL, UNIMPLEMENTED, FAILED
    behaviorClose: OK, INFORMATIONAL, FAILED, UNCLEAN, WRONG CODE,
                   FAILED BY CLIENT (the last only when testing clients)

A case counts as *failed* when its behavior is FAILED, or when its closing
behavior is anything but OK/INFORMATIONAL (an unclean or wrong close), or
when it was expected (--expect-cases) but is missing from the report, e.g.
because the server died and wstest stopped early.  NON-STRICT,
INFORMATIONAL and UNIMPLEMENTED are reported but are not failures.

Exit status: 0 when there are cases and none failed, 1 otherwise (2 on a
usage/input error).  The last line printed is always
    autobahn: N passed, M failed
"""

import argparse
import json
import re
import sys
import textwrap
from collections import Counter

BEHAVIORS = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED"]
CLOSE_BEHAVIORS = ["OK", "INFORMATIONAL", "FAILED", "UNCLEAN", "WRONG CODE",
                   "FAILED BY CLIENT"]
CLEAN_CLOSE = {"OK", "INFORMATIONAL"}


def case_key(case_id):
    """Sort "9.10.2" after "9.2.1": compare the dotted parts as numbers."""
    return [int(p) if p.isdigit() else p for p in re.split(r"[.]", case_id)]


def print_counts(title, counter, known):
    print(title)
    # Known values first in their canonical order, then anything unexpected.
    for name in known + sorted(set(counter) - set(known)):
        if counter.get(name, 0) or name in known:
            print("  %-18s %5d" % (name, counter.get(name, 0)))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("index", help="path to index.json written by wstest")
    ap.add_argument("--expect-cases", metavar="FILE",
                    help="file with the case ids that should have run, one "
                         "per line; missing ones count as failed")
    ap.add_argument("--agent", help="only judge this agent "
                                    "(default: every agent in the report)")
    args = ap.parse_args(argv)

    try:
        with open(args.index, encoding="utf-8") as f:
            index = json.load(f)
    except (OSError, ValueError) as e:
        print("check.py: cannot read %s: %s" % (args.index, e), file=sys.stderr)
        if not (args.expect_cases and args.agent):
            print("autobahn: 0 passed, 0 failed")
            return 2
        # wstest died before writing a report: every expected case is
        # then reported below as missing.
        index = {}
    if not isinstance(index, dict):
        print("check.py: %s: top level is not an object" % args.index,
              file=sys.stderr)
        print("autobahn: 0 passed, 0 failed")
        return 2

    agents = sorted(index)
    missing_agent = False
    if args.agent is not None:
        agents = [args.agent]
        if args.agent not in index:
            # Judge it as an agent that ran nothing: with --expect-cases
            # every expected case then shows up as missing.
            missing_agent = True
            print("check.py: agent %r not in report (has: %s)"
                  % (args.agent, ", ".join(sorted(index)) or "none"),
                  file=sys.stderr)

    expected = None
    if args.expect_cases:
        with open(args.expect_cases, encoding="utf-8") as f:
            expected = [ln.strip() for ln in f if ln.strip()
                        and not ln.startswith("#")]

    behavior = Counter()
    close = Counter()
    failed = []    # (agent, case_id, reason): ran, but failed
    missing = []   # (agent, case_id): expected, but not in the report
    total = 0

    for agent in agents:
        cases = index.get(agent) or {}
        for cid in sorted(cases, key=case_key):
            c = cases[cid] or {}
            b = c.get("behavior", "MISSING")
            bc = c.get("behaviorClose", "MISSING")
            behavior[b] += 1
            close[bc] += 1
            total += 1
            reasons = []
            if b == "FAILED":
                reasons.append("behavior FAILED")
            elif b not in BEHAVIORS:
                reasons.append("behavior %s" % b)
            if bc not in CLEAN_CLOSE:
                reasons.append("close %s (remote close code %s)"
                               % (bc, c.get("remoteCloseCode")))
            if reasons:
                failed.append((agent, cid, "; ".join(reasons)))
        if expected is not None:
            gone = sorted(set(expected) - set(cases), key=case_key)
            total += len(gone)
            missing.extend((agent, cid) for cid in gone)

    print("Autobahn report: %s" % args.index)
    print("agents: %s" % (", ".join(agents) or "none"))
    print_counts("behavior:", behavior, BEHAVIORS)
    print_counts("behaviorClose:", close, CLOSE_BEHAVIORS)

    if failed:
        print("failed cases (%d):" % len(failed))
        for agent, cid, why in failed:
            print("  %-10s %-12s %s" % (cid, "[" + agent + "]", why))
    if missing:
        # Usually a crashed server: wstest stops at the first refused
        # connection, so list these compactly rather than one per line.
        print("cases missing from the report, counted as failed (%d):"
              % len(missing))
        for agent in sorted({a for a, _ in missing}):
            ids = [cid for a, cid in missing if a == agent]
            print(textwrap.fill(" ".join(ids), width=78,
                                initial_indent="  [%s] " % agent,
                                subsequent_indent="    "))

    nfailed = len(failed) + len(missing)
    ok = total > 0 and nfailed == 0 and not missing_agent
    if total == 0:
        print("no test cases in report")
    print("autobahn: %d passed, %d failed" % (total - nfailed, nfailed))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
