"""The `distill` command: engine commands from core_distill.cli plus the service's own."""

from __future__ import annotations

from core_distill.cli import engine_cli

cli = engine_cli


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
