"""Evaluating pruned models: perplexity, latency, sweeps."""
