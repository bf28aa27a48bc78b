"""mainsail's version, in a leaf module: anything can import it without the package's public surface."""

__version__ = "0.1.0"
