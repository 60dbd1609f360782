"""Integration tests: the provider on a real Airflow deployment (``pytest -m integration``)."""
