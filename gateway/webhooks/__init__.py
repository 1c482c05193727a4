"""Signed webhook endpoints, events and their delivery."""
