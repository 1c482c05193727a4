"""The usage ledger: group-committed writes, the spool, and queries."""
