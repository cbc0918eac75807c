"""creformer: CREformer data engine, distributed trainer and zero-shot analyses."""

__version__ = "0.1.0"
