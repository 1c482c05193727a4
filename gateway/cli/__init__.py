"""The `bookbag-gateway` command line."""
