#!/usr/bin/env python3
"""Statement profile of a PostgreSQL log written with log_min_duration_statement = 0
(`tx-latency --pg-log --logs DIR` leaves it in DIR/postgres.log).

Usage: pg-statement-profile.py POSTGRES_LOG TRANSACTIONS [NODES] [TOP]

Prints, per statement text (parameters stripped, whitespace folded), how many times
it ran and the server time it took, in total and per transaction and node, most
frequent first; BEGIN/COMMIT/ROLLBACK are counted like any statement.
"""
import collections
import re
import sys

LINE = re.compile(r"duration: ([0-9.]+) ms  (?:statement|execute [^:]*): (.*)$")


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    path, txs = sys.argv[1], int(sys.argv[2])
    nodes = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    top = int(sys.argv[4]) if len(sys.argv) > 4 else 25
    count = collections.Counter()
    ms = collections.Counter()
    with open(path, errors="replace") as f:
        for line in f:
            m = LINE.search(line)
            if not m:
                continue
            text = " ".join(m.group(2).split())[:110]
            count[text] += 1
            ms[text] += float(m.group(1))
    total = sum(count.values())
    per = txs * nodes
    print(f"{total} statements for {txs} transactions on {nodes} nodes: "
          f"{total / per:.1f} per transaction and node, "
          f"{sum(ms.values()) / per:.2f} ms of server time per transaction and node")
    print(f"| statement | count | per tx and node | ms per tx and node |")
    print(f"|---|---|---|---|")
    for text, n in count.most_common(top):
        print(f"| `{text}` | {n} | {n / per:.1f} | {ms[text] / per:.3f} |")


if __name__ == "__main__":
    main()
