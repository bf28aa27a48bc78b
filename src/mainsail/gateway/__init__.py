"""`mainsail up`, assembled: one port for every emulated service (app), and the server that runs it (server)."""
