"""``foundry-gateway``: run the gateway and curate its models from the terminal.

Every command shares the server's code: the same registry loader, RAM budget and routing policy, so
``foundry-gateway select --task code`` says exactly what ``GET /v1/route?task=code`` would. One module per
command group, each with its ``add_parser``; this one assembles them and turns every user mistake into one line
on stderr and exit status 1 (2 for a bad setting).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from app import __version__
from app.access.keys import KeysError
from app.cli import batches, bench, cache, compile, keys, models, output, registry, serve, settings, status
from app.cli.output import CliError
from app.core.errors import GatewayError
from app.core.registry import RegistryError

EPILOG = """examples:
  foundry-gateway serve                      # managed Foundry Local + gateway on 127.0.0.1:8080
  foundry-gateway models --task chat         # what exists and what fits this host
  foundry-gateway select --task code         # which model code requests get, and why
  foundry-gateway status                     # what the running gateway is doing
  foundry-gateway registry validate          # check models.json
  foundry-gateway bench --repeat 3 --plot    # latency/TTFT/tokens per model into results/
  foundry-gateway batches ls                 # batches on the running gateway, with their progress

In a pipe every table is printed as tab-separated lines (a header, then one line a row); --json everywhere.
"""

GROUPS = (serve, models, status, registry, compile, cache, settings, bench, keys, batches)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="foundry-gateway",
        description="One stable OpenAI-compatible URL in front of Foundry Local: routes each request to the "
        "best model for its task that fits this host's RAM.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"foundry-gateway {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in GROUPS:
        group.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from pydantic import ValidationError

    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ValidationError as exc:
        for detail in exc.errors():
            name = f"GATEWAY_{'.'.join(str(p) for p in detail['loc']).upper()}"
            output.error(f"{name}: {str(detail['msg']).removeprefix('Value error, ')}")
        return 2
    except (RegistryError, KeysError) as exc:
        for problem in exc.problems:
            output.error(problem)
        return 1
    except GatewayError as exc:
        output.error(exc.message)
        return 1
    except (CliError, OSError) as exc:
        output.error(str(exc))
        return 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
