"""Foundations every layer uses: errors, atomic writes, digests."""
