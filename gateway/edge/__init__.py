"""HTTP: the ASGI app, the routes and their handlers."""
