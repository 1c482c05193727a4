"""Idempotency-Key: claim, stage, finish, replay; stores on SQL and Redis."""
