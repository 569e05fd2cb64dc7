"""Data sets: sources (mirrors, checksums, download), IDX parsing, preparation."""
