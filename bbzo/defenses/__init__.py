"""bbzo.defenses."""
