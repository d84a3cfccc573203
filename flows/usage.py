"""The error every `asof` command raises for bad input.

It lives apart from `flows/cli.py` so the class is the same object whether the CLI runs as the
`asof` console script or as `python -m flows.cli` (where cli.py is `__main__`).
"""


class Refused(Exception):
    """Bad input: reported as one line on stderr with exit status 2, before anything runs."""
