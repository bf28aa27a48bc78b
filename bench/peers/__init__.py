"""The reference stacks mainsail is measured against, and a canned server for the load generator."""
