"""Command-line front-end: one module per subcommand, dispatched by :mod:`lopt.cli.main`."""
