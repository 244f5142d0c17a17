"""The face model and what both sides need to feed it: alignment and preprocessing."""
