"""`make demo`: the exit handler end to end on local servers, explained as it goes.

Starts nats-server (JetStream on) and fake-gcs-server on free loopback ports, seeds a
TFX-like pipeline root, runs `exit-handler publish` exactly as the WorkflowTemplate would,
and shows what an Argo Events NATS EventSource (`jsonBody: true`) hands a Sensor.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from exit_handler.testing import (
    FakeGcsServer,
    NatsServer,
    Received,
    Subscriber,
    add_stream,
    stream_messages,
)

BUCKET = "ml-pipelines"
ROOT = f"gs://{BUCKET}/penguin-pipeline"
PUSHED = "penguin-pipeline/Pusher/pushed_model"
CLOCK_SKEW = 1  # seconds; production keeps the default 5, runs are minutes apart
# The pipeline author's Run Artifact Definition, as for kfp-operator: this run's pushed model.
ARTIFACTS = '[{name: serving-model, path: "Pusher:pushed_model:0[pushed == 1]"}]'
SEED_SENSOR_FILTERS = {"body.status": "succeeded", "body.pipelineName": "penguin-pipeline"}


def say(text: str = "") -> None:
    print(text, flush=True)


def seed_pipeline_root(gcs: FakeGcsServer) -> str:
    """Two earlier runs (one pushed, one unblessed), then this run's push; returns created-at."""
    gcs.create_bucket(BUCKET)
    model = {"saved_model.pb": b"\x08\x01" * 64, "variables/variables.index": b"idx"}
    for name, data in model.items():
        gcs.upload(BUCKET, f"{PUSHED}/101/{name}", data)
    gcs.upload(BUCKET, f"{PUSHED}/102/", b"")  # not blessed: only a directory marker
    say(f"  earlier run 1 pushed   {ROOT}/Pusher/pushed_model/101/  (saved_model.pb, variables/)")
    say(f"  earlier run 2 unblessed {ROOT}/Pusher/pushed_model/102/  (zero-byte marker only)")
    # GCS stamps creation times itself. This run starts (whole seconds, like Argo's
    # creationTimestamp) more than CLOCK_SKEW after the earlier runs' last object.
    start = math.ceil(time.time() + CLOCK_SKEW + 0.01)
    time.sleep(start - time.time())
    created_at = datetime.fromtimestamp(start, UTC)
    for name, data in model.items():
        gcs.upload(BUCKET, f"{PUSHED}/103/{name}", data)
    say(f"  this run pushed        {ROOT}/Pusher/pushed_model/103/  (saved_model.pb, variables/)")
    # The run ends (the exit handler starts) in a later second than it began, as real runs do.
    time.sleep(max(0.0, start + 1 - time.time()))
    return created_at.strftime("%Y-%m-%dT%H:%M:%SZ")


def as_event_source(message: Received) -> dict[str, Any]:
    """What Argo Events' NATS EventSource with `jsonBody: true` hands a Sensor."""
    return {
        "subject": message.subject,
        # nats.Header is map[string][]string: Sensors write header.ce-id.0
        "header": {key: [value] for key, value in message.headers.items()},
        "body": json.loads(message.data),
    }


def lookup(event: dict[str, Any], path: str) -> object:
    value: Any = event
    for key in path.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def exit_handler(args: list[str], env: dict[str, str], *, show: bool = True) -> int:
    # Quoted as a shell would need them, so the command can be pasted as shown.
    shown = " \\\n      ".join(map(shlex.quote, args)) if show else "publish (same arguments)"
    say(f"  $ exit-handler {shown}")
    done = subprocess.run(
        [sys.executable, "-m", "exit_handler", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    for line in done.stderr.splitlines():
        say(f"  | {line}")
    say(f"  exit code {done.returncode}")
    return done.returncode


def main() -> int:
    say("== 1. Local servers")
    with (
        tempfile.TemporaryDirectory() as scratch,
        NatsServer(store_dir=Path(scratch) / "js") as nats_server,
        FakeGcsServer() as gcs,
    ):
        say(f"  nats-server {nats_server.url} (JetStream on), pid {nats_server.pid}")
        say(f"  fake-gcs-server {gcs.endpoint}, pid {gcs.pid}")
        env = {**os.environ, "STORAGE_EMULATOR_HOST": gcs.endpoint}
        say("\n== 2. The pipeline root, shared by every run of penguin-pipeline")
        created_at = seed_pipeline_root(gcs)
        args = [
            "publish",
            "--status=Succeeded",
            "--workflow-name=penguin-pipeline-x7k2p",
            "--workflow-uid=6c1a2f3e-0b9d-4c55-8e21-7d9f0a4b3c12",
            "--namespace=kubeflow",
            f"--created-at={created_at}",
            "--pipeline-name=penguin-pipeline",
            f"--pipeline-root={ROOT}",
            f"--artifacts={ARTIFACTS}",
            "--failures=null",
            "--run-id=6c1a2f3e-0b9d-4c55-8e21-7d9f0a4b3c12",
            f"--nats-url={nats_server.url}",
            f"--clock-skew={CLOCK_SKEW}",
            "--timeout=20",
        ]
        say("\n== 3. Argo runs the exit handler as the workflow's onExit step")
        say("  (no JetStream stream covers 'events', so delivery falls back to core NATS)")
        with Subscriber(nats_server.url, "events") as source:
            status = exit_handler(args, env)
            received = source.wait_for(1)
        if status != 0 or len(received) != 1:
            say(f"DEMO FAILED: exit {status}, {len(received)} events received")
            return 1
        event = as_event_source(received[0])
        say("\n== 4. What the NATS EventSource (jsonBody: true) hands a Sensor")
        # One-value header lists on one line each, so the shape reads at a glance.
        say(re.sub(r'\[\n\s+("[^"\n]*")\n\s+\]', r"[\1]", json.dumps(event, indent=2)))
        say("\n== 5. The seed's Sensor filters")
        matched = True
        for path, wanted in SEED_SENSOR_FILTERS.items():
            actual = lookup(event, path)
            matched &= actual == wanted
            verdict = "match" if actual == wanted else "NO MATCH"
            say(f"  {path} == {wanted!r}: {actual!r} -> {verdict}")
        say(f"  sensor fires: {'yes' if matched else 'no'}; the model server loads")
        for artifact in event["body"]["artifacts"]:
            say(f"    {artifact['location']}  (artifact {artifact['name']!r})")
        body = event["body"]
        say(f"  the run: {body['runStartTime']} to {body['runEndTime']}")
        say("\n== 6. With a JetStream stream: a retried exit-handler pod re-sends the same id")
        add_stream(nats_server.url, "EVENTS", "events")
        for _ in range(2):
            exit_handler(args, env, show=False)
        stored = len(stream_messages(nats_server.url, "EVENTS"))
        say(f"  messages stored in stream EVENTS after two runs: {stored} (de-duplicated on ce-id)")
        say("\n== 7. Servers stopped. Nothing else was left running.")
        ordered = body["runStartTime"] < body["runEndTime"]
        return 0 if matched and stored == 1 and body["artifacts"] and ordered else 1


if __name__ == "__main__":
    sys.exit(main())
