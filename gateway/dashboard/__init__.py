"""The dashboard: a static page (`static/`) reading the JSON API, and its cookie sessions."""
