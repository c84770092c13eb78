"""`dsadvise wizard` paints its first screen without the heavy modules (measured in a fresh interpreter)."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = r"""
import json, sys, time
t0 = time.perf_counter()
from advisor.tui.app import WizardApp

class Probe(WizardApp):
    def on_ready(self):          # posted once the first screen has been painted
        self.seen = {"seconds": time.perf_counter() - t0,
                     "loaded": sorted(m for m in ("torch", "deepspeed", "transformers", "accelerate", "pydantic",
                                                  "advisor.api", "advisor.recommend", "advisor.render")
                                      if m in sys.modules)}
        self.exit()

app = Probe()
app.run(headless=True, size=(120, 40))
print(json.dumps(app.seen))
"""


def test_first_paint_is_light_and_quick():
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    # Catalogs (pydantic), estimator, recommender and renderer load just after the first paint.
    assert seen["loaded"] == [], seen
    # Typically 0.3-0.6 s after the imports; the bound only catches gross regressions on a loaded CI box.
    assert seen["seconds"] < 5.0, seen
