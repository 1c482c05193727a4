"""`python -m gateway` is `bookbag-gateway`."""

from gateway.cli import main

main()
