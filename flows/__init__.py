"""Prefect flows: compositions of the tasks in :mod:`tasks`."""
