"""Per-file summary of the last `mutmut run` (read from mutants/**/*.meta): mutants, killed,
survived, no tests, timeouts and the killed share, as a Markdown table.

Killed share = (killed + timeout) / (mutants that were run), as mutmut's own score counts a
timeout as detected. Files whose mutants were not run yet are listed with their count.
"""
from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from mutmut.stats import status_by_exit_code


def summarize(root: Path) -> list[tuple[str, Counter]]:
    rows = []
    for meta in sorted(root.rglob("*.py.meta")):
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        counts = Counter(status_by_exit_code[code] for code in codes.values())
        counts["total"] = len(codes)
        rows.append((str(meta.relative_to(root))[: -len(".meta")], counts))
    return rows


def main(root: str = "mutants") -> int:
    rows = summarize(Path(root))
    if not rows:
        print(f"no mutmut results under {root}/; run `make mutation` first", file=sys.stderr)
        return 1
    print("| file | mutants | killed | survived | no tests | timeout | not run | killed share |")
    print("|---|---|---|---|---|---|---|---|")
    for path, c in rows:
        run = c["total"] - c["not checked"]
        detected = c["killed"] + c["timeout"]
        share = f"{100 * detected / run:.0f}%" if run else "not run"
        print(f"| {path} | {c['total']} | {c['killed']} | {c['survived']} | {c['no tests']} | "
              f"{c['timeout']} | {c['not checked']} | {share} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
