"""Measurement helpers of the agent's benchmark harness."""
