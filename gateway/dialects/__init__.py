"""Wire dialects: parse a request into a call, render an outcome back."""
