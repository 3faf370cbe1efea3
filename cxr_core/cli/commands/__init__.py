"""CLI subcommands: each module registers one or more argparse subcommands."""
