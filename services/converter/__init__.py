"""The converter service."""
