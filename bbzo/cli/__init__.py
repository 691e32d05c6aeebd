"""bbzo.cli."""
