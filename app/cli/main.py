"""``foundry-gateway``: run the gateway and curate its models from the terminal.

Every command shares the server's code: the same registry loader, RAM budget and routing policy, so
``foundry-gateway select --task code`` says exactly what ``GET /v1/route?task=code`` would. One module per
command group, each with its ``add_parser``; this one assembles them and turns every user mistake into one line
on stderr and exit status 1 (2 for a bad setting).
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from app import __version__
from app.access.keys import KeysError
from app.cli import (
    batches,
    bench,
    cache,
    compile,
    keys,
    modelcache,
    models,
    output,
    registry,
    serve,
    settings,
    status,
    usage,
)
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

GROUPS = (serve, models, status, usage, registry, compile, modelcache, cache, settings, bench, keys, batches)


class Parser(argparse.ArgumentParser):
    """argparse, with a "did you mean" for a command that is almost one of its choices — and, where a command has
    actions of its own (``models cache``), an unknown option named as such, not the value after it taken for an
    action."""

    argv: tuple[str, ...] = ()  # what is being parsed (set by ``parse``)

    def error(self, message: str) -> Any:
        if "invalid choice: '" in message:
            options = {o for action in self._actions for o in action.option_strings}
            unknown = [a.split("=", 1)[0] for a in Parser.argv if a.startswith("-") and a.split("=", 1)[0] not in
                       options]
            if unknown:
                super().error(_unrecognized(self, unknown))
            wrong = message.split("invalid choice: '", 1)[1].split("'", 1)[0]
            choices = [a for a in self._actions if isinstance(a, argparse._SubParsersAction)]
            close = difflib.get_close_matches(wrong, [c for a in choices for c in a.choices], n=1)
            if close:
                message += f"; did you mean '{close[0]}'?"
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="foundry-gateway",
        description="One stable OpenAI-compatible URL in front of Foundry Local: routes each request to the "
        "best model for its task that fits this host's RAM.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"foundry-gateway {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=Parser)
    for group in GROUPS:
        group.add_parser(sub)
    return parser


def _parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """The parser and every subcommand's, depth first."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                yield from _parsers(child)


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """The arguments; an unknown option is refused by the subcommand it was given to (its usage, not the top
    level's), with the option it most likely meant."""
    Parser.argv = tuple(sys.argv[1:] if argv is None else argv)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        func = getattr(args, "func", None)
        owner = next((p for p in _parsers(parser) if p.get_default("func") is func), parser)
        accepted = {o for action in owner._actions for o in action.option_strings}
        if unknown[0].split("=", 1)[0] in accepted:  # given before the command: it belongs after it
            owner.error(f"{unknown[0]} goes after the command: {owner.prog} {unknown[0]} …")
        owner.error(_unrecognized(owner, unknown))
    return args


def _unrecognized(parser: argparse.ArgumentParser, unknown: list[str]) -> str:
    options = [o for action in parser._actions for o in action.option_strings]
    close = difflib.get_close_matches(unknown[0].split("=", 1)[0], options, n=1)
    hint = f"; did you mean {close[0]}?" if close else f" (see {parser.prog} --help)"
    return f"unrecognized arguments: {' '.join(unknown)}{hint}"


def main(argv: Sequence[str] | None = None) -> int:
    from pydantic import ValidationError

    args = parse(build_parser(), argv)
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
