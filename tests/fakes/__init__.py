"""Pieces of the fake provider (tests/fake_provider.py), one wire dialect or concern each."""
