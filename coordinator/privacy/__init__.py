"""Privacy accounting of DP rounds (the noise itself is coordinator/strategies/dp.py's)."""
