"""mainsail's version, in a leaf module so that anything can import it without importing the package's public surface."""

__version__ = "0.1.0"
