"""Chat Completions <-> Anthropic Messages: requests (request.py), replies and stop reasons
(reply.py), streams (stream.py)."""
