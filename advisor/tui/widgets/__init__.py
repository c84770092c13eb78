"""Widgets of the wizard, one module per screen area; each is thin over :mod:`advisor.tui.backend`."""
