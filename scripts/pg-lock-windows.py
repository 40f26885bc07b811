#!/usr/bin/env python3
"""How much of a batch each node's serialized database work covers, from a
PostgreSQL log written with log_min_duration_statement = 0 and log_line_prefix
'%m %d %p ' (`tx-latency --pg-log --logs DIR` leaves it in DIR/postgres.log).

Usage: pg-lock-windows.py POSTGRES_LOG

Two windows per node database, both from the start of a statement to the end of
its transaction's COMMIT (or ROLLBACK):
- audited: from the first audited statement (the ones that take the audit append
  lock, which is held until the commit) — the chain is one sequence per node;
- own vote: the own-vote transaction (held under the key's velocity lock).
For each it prints how many there were, the union of the windows as a share of the
batch (an upper bound on how busy the lock was: waits are inside the windows), and
the windows' p50/p90 length. The log's timestamps have millisecond resolution.
"""
import collections
import re
import sys

LINE = re.compile(
    r"^\S+ (\d+):(\d+):([\d.]+) \S+ (\S+) (\d+) LOG:  duration: ([\d.]+) ms  "
    r"(statement|execute [^:]*|bind [^:]*|parse [^:]*): (.*)$"
)
# Statements that call audit_append (directly or through audited_statement!).
AUDITED = (
    "SELECT 0::bigint, new_seq",
    "WITH o AS (INSERT INTO outflows",
    "WITH r AS (UPDATE voting_rounds",
    "WITH done AS",
    "WITH t AS (UPDATE transactions SET state = 'signed'",
)
OWN_VOTE = ("WITH o AS (INSERT INTO outflows",)


def windows(path, starts):
    pending = {}
    out = collections.defaultdict(list)
    with open(path, errors="replace") as f:
        for line in f:
            m = LINE.match(line)
            if not m:
                continue
            h, mi, s, db, pid, d, kind, text = m.groups()
            end = int(h) * 3600 + int(mi) * 60 + float(s)
            if kind.startswith("execute") and text.startswith(starts):
                pending.setdefault(pid, end - float(d) / 1000)
            elif kind == "statement" and text.startswith(("COMMIT", "ROLLBACK")):
                if pid in pending:
                    out[db].append((pending.pop(pid), end))
    return out


def report(name, per_db):
    print(f"{name}:")
    for db, w in sorted(per_db.items()):
        w.sort()
        span = w[-1][1] - w[0][0]
        union, (cs, ce) = 0.0, w[0]
        for a, b in w[1:]:
            if a > ce:
                union += ce - cs
                cs, ce = a, b
            else:
                ce = max(ce, b)
        union += ce - cs
        lens = sorted(b - a for a, b in w)
        print(
            f"  {db}: {len(w)} windows over {span:.2f} s, union {union:.2f} s "
            f"({100 * union / span:.0f} %), p50 {1000 * lens[len(lens) // 2]:.1f} ms, "
            f"p90 {1000 * lens[int(len(lens) * 0.9)]:.1f} ms"
        )


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    report("audited transactions (audit append lock)", windows(sys.argv[1], AUDITED))
    report("own-vote transactions (velocity lock)", windows(sys.argv[1], OWN_VOTE))


if __name__ == "__main__":
    main()
