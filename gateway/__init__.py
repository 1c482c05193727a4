"""Bookbag Gateway: an OpenAI-compatible proxy that meters credits at the edge."""
