"""Models: the built-in builders, regularizers, weight statistics."""
