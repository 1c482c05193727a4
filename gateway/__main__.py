"""`python -m gateway` is `bookbag-gateway`."""

from gateway.cli.app import main

main()
