"""`python -m worker …` is the `secure-session` command."""

from worker.cli import main

main()
