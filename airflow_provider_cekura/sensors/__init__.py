"""Cekura sensors."""
