"""``python -m matchmaking``: the CLI through a given interpreter (what MLproject steps run)."""

from matchmaking.cli import main

main()
