"""bbzo.unlearn."""
