"""``python -m mainsail.cli``: how the control plane starts instances (``LocalBackend``)."""

from mainsail.cli.app import main

main()
