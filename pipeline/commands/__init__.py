"""CLI command modules. Each module here defines

    def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None

adding its sub-commands (with `parents=[common]` for the shared options and
`set_defaults(func=handler)`, where `handler(args) -> int` returns the exit code).
`pipeline.cli` imports every module in this package, in name order.
"""
