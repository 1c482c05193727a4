"""The request flow: the order of the steps and the money, free of HTTP."""
