"""`python -m modelport` runs the CLI."""

from modelport.cli.app import main

main()
