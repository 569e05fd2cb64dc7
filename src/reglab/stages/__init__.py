"""One thin entry point per DVC stage: read params.yaml, call the library, write outputs."""
