"""`make demo` shows the whole event: the author's artifact, a run that starts before it ends."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

DEMO = Path(__file__).parent.parent / "demo" / "run_demo.py"


def test_the_demo_shows_the_whole_event() -> None:
    done = subprocess.run(
        [sys.executable, str(DEMO)], capture_output=True, text=True, check=False, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    shown = re.search(r"^== 4\..*?\n(\{.*?^\})$", done.stdout, re.MULTILINE | re.DOTALL)
    assert shown is not None, done.stdout
    body = json.loads(shown.group(1))["body"]
    (pushed,) = body["servingModelArtifacts"]
    assert pushed["location"].endswith("/Pusher/pushed_model/103")
    assert body["artifacts"] == [{"name": "serving-model", "location": pushed["location"]}]
    assert body["runStartTime"] < body["runEndTime"]
    assert "sensor fires: yes" in done.stdout
