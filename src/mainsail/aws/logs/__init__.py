"""CloudWatch Logs over the instances' log files: the operations (api), the reader (files), filter patterns."""
