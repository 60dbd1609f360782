"""Cekura operators."""
