"""Framework-free feature work shared by the built-in handlers: artifacts, risk tables, imputation,
calibration and output formatting. Pure functions over numpy arrays and pandas frames; no I/O but
the artifact readers."""
