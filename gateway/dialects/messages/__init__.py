"""Anthropic Messages: the request parser, the stream as the event writer takes it, and
errors in Anthropic's shape."""
