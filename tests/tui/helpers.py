"""Helpers for driving the wizard headless: settle until the shown result matches the inputs, fixed sizes."""

from __future__ import annotations

SIZE = (130, 42)        # terminal size of every pilot and snapshot test


async def settle(pilot, timeout: float = 20.0) -> None:
    """Wait until the wizard has shown the result for its current inputs (debounce + worker + refresh)."""
    app = pilot.app
    waited = 0.0
    while waited < timeout:
        await pilot.pause(0.02)
        waited += 0.02
        if app.idle:
            await app.workers.wait_for_complete()
            await pilot.pause()
            if app.idle:
                return
    raise AssertionError(f"the wizard did not settle within {timeout} s")


def steady(app) -> None:
    """No blinking cursors: screenshots must not depend on when they are taken."""
    from textual.widgets import Input, TextArea

    for widget in app.query(Input):
        widget.cursor_blink = False
    for widget in app.query(TextArea):
        widget.cursor_blink = False


def run_async(fn):
    """Run an ``async def`` test with asyncio.run (no pytest-asyncio / anyio plugin needed); fixtures still work."""
    import asyncio
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return asyncio.run(fn(*args, **kwargs))

    return wrapper
