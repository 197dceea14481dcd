"""The commands of the search: one module per ``sensorium-search`` subcommand (``add_arguments(parser)``,
``run(args) -> int``), listed in ``sensorium.cli.COMMANDS``. May import every layer; nothing imports it."""
