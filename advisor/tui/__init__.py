"""``dsadvise wizard``: an interactive terminal UI (Textual) over the same API as the CLI.

Importing this package does not import Textual; only :mod:`advisor.tui.app` and the widgets do, and the
``wizard`` command imports them inside its handler so that the rest of the CLI stays fast.
"""
