"""Workspaces, plans, keys, caps, BYO keys, recharge, thresholds, reconcile."""
