"""The `fedface` console command. Each subcommand imports its heavy
dependencies lazily, so that a device-only install can run `fedface agent`."""
