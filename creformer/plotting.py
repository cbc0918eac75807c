"""Matplotlib for writing figures to files: the Agg backend, chosen before pyplot is imported, so
that no job tries a display (Ray workers, CI and clusters have none)."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

__all__ = ["plt"]
