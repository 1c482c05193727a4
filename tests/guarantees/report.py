"""The latest figures of each guarantees test as a Markdown table (for docs/guarantees.md).

    .venv/bin/python -m tests.guarantees.report [test-artifacts/guarantees.jsonl]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from tests.guarantees.history import FIGURES_FILE

COLUMNS = ("ops", "ok", "fail", "indeterminate", "entries", "charged", "overdraft",
           "cap_overdraft", "leaked_holds", "lost", "duplicates", "charged_failures",
           "violations")
SKIP = {"test", "at", "attempts", *COLUMNS}


def latest(path: Path) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            data = json.loads(line)
            found[data["test"]] = data
    return found


def table(rows: dict[str, dict[str, Any]]) -> str:
    head = ["test", *COLUMNS, "also"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in sorted(rows):
        data = rows[name]
        also = ", ".join(f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in data.items()
                         if k not in SKIP)
        out.append("| " + " | ".join([name, *(str(data.get(c, "")) for c in COLUMNS), also])
                   + " |")
    return "\n".join(out)


def main(argv: list[str]) -> None:
    path = Path(argv[0]) if argv else FIGURES_FILE
    print(table(latest(path)))


if __name__ == "__main__":
    main(sys.argv[1:])
