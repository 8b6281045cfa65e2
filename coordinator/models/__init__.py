"""Models the coordinator ships to agents.

`coordinator.models.synthetic` builds small, deterministic ONNX models (and matching `.npz` data sets)
with `onnx.helper` alone: the built-in demo model until a trained one exists, and the fixtures of tests
and benchmarks.
"""
