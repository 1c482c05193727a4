"""Route handlers: HTTP in, services called, HTTP out."""
