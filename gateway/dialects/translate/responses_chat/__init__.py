"""Responses <-> Chat Completions: a Responses request served by a chat upstream
(request.py), the chat reply rendered as a Response (reply.py) and chat chunks as the typed
Responses events (stream.py)."""
