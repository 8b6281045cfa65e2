"""edgebench agent: serves benchmark jobs for one device over gRPC. Light: no torch, no coordinator."""

__version__ = "0.1.0"
