"""``python -m llmctx`` runs the command line."""

from llmctx._cli import main

main()
