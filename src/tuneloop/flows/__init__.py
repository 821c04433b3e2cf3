"""Prefect flows, one per operator verb."""
