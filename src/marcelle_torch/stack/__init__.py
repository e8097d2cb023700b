"""The local stack: the launcher behind `marcelle-torch up` / `make demo`, and the web app's static server."""
