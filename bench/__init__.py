"""mainsail's benchmarks: ``python -m bench serve`` measures serving against the peers.

Results go to ``docs/benchmarks.md``, one marked section per benchmark (the soak test's,
``python -m bench soak``, to ``docs/reliability.md``). Importing this package
is cheap; each benchmark imports what it needs when it runs.
"""
