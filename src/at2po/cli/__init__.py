"""Command-line interface: ``at2po <command>``."""
