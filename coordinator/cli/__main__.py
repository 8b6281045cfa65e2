"""`python -m coordinator.cli` = `edgebench`."""

from coordinator.cli import main

main()
