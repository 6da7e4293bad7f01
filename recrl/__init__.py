"""recrl: JAX reimplementations of ProRL, In-Context RLVR and GORACS."""

__version__ = "0.1.0"
