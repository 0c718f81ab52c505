"""Measuring: activation capture, results cache, entropy and MI estimators, sinks, boundary."""
