"""Translation between wire dialects, one package per pair, pure functions and small stateful
stream translators (no I/O). The flow picks one when the upstream does not speak the
client's dialect (SPEC: "Three dialects, one meter")."""
