"""Balance stores behind the `Meter` interface: memory (embedded), sql, redis."""
