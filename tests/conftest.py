"""Test-wide settings: no model hub, no display.

Set before any test module imports transformers or matplotlib, so a test that would reach
for a hub fails fast instead of hanging on the network.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
