"""``foundry-gateway``: the command line, one module per command group (each with its ``add_parser``)."""

from app.cli.main import main

__all__ = ["main"]
