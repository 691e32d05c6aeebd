"""Attacks on black-box models: SECA (semantically equivalent, coherent rephrasings)."""
