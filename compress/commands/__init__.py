"""CLI adapters, one module per subcommand."""
