"""SECA prompt attacks (coming)."""
