"""bbzo.privacy: differentially private methods. ``bbzo.privacy.gsd`` is Private-GSD, private
synthetic data fitted by the engine's population search."""
