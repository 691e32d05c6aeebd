"""bbzo.privacy."""
