"""One module per command group; imported lazily by provision.cli."""
