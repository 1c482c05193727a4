"""The guarantees suite: crash points, faults, properties, hostile input and a secret canary.

Each test records what its clients saw (`history.py`), checks it against the
ledger, the balance store and the holds, and prints one JSON line of figures
(also appended to `test-artifacts/guarantees.jsonl`). `docs/guarantees.md`
maps every invariant of the design to its tests.
"""
