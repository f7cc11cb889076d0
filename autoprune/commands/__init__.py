"""One module per CLI command; each defines a :class:`~autoprune.commands.base.Command`."""
