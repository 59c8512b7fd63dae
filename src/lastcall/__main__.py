"""``python -m lastcall``: the ``lastcall`` command."""

from lastcall.cli import main

main()
