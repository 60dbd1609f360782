"""Cekura triggers."""
