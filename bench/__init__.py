"""A benchmark: the project's training against a bare Keras script, on this machine."""
