"""Per-key rate limits: the limiter and its stores."""
