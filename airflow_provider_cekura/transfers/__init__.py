"""Cekura transfers."""
