from reglab.cli import run

run()
