"""The `mainsail` command line: each command parses its options, builds settings and calls the library."""
