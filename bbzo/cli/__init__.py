"""The ``bbzo`` command line; the entry point is ``bbzo.cli.main:main``."""
