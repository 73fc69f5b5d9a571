"""The local stack's supervisor: kill -9 of a service, `visearch restart`, `visearch up` repair."""

import json
import os
import signal
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from services.common.errors import VisearchError
from visearch import demo, localstack
from visearch.cli import app
from visearch.client import IngestItem

pytestmark = pytest.mark.integration

COLLECTION = "supervised"


def process(state_dir: Path, name: str) -> localstack.ProcessInfo:
    state = localstack.StackState.load(state_dir)
    return next(p for p in state.processes if p.name == name)


def serving(state_dir: Path, name: str) -> bool:
    """What `visearch status` says of `name`'s health (over TLS when the stack serves TLS)."""
    report = localstack.status(state_dir)
    return next(s for s in report["services"] if s["name"] == name)["serving"]


def wait_for(what: str, check, timeout_s: float = 120.0):
    """Polls `check` until it returns a truthy value (the bound only stops a hung test)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = check()
            if value:
                return value
        except VisearchError:
            pass
        assert time.monotonic() < deadline, f"{what} did not happen"
        time.sleep(0.2)


def search_finds(client, image_id: str, image: bytes) -> bool:
    """The session's client, connected to the gateway's first address, still searches."""
    hits = client.search(COLLECTION, image, k=1, rerank="none", require_complete=True).hits
    return bool(hits) and hits[0].id == image_id


@pytest.fixture(scope="module")
def sample(client, tmp_path_factory) -> tuple[str, bytes]:
    path = demo.write_samples(tmp_path_factory.mktemp("samples"))[0]
    image = path.read_bytes()
    client.ingest(COLLECTION, [IngestItem("sample-0", image=image)])
    return "sample-0", image


def test_kill_9_of_a_service_is_restarted_on_its_port(stack, client, sample):
    state_dir = Path(stack.state_dir)
    before = process(state_dir, "embedder")
    assert localstack.StackState.load(state_dir).supervisor is not None
    os.kill(before.pid, signal.SIGKILL)

    def restarted():
        now = process(state_dir, "embedder")
        return now if now.pid != before.pid and serving(state_dir, "embedder") else None

    after = wait_for("the embedder's restart", restarted)
    assert after.address == before.address and after.metrics_port == before.metrics_port
    assert after.restarts == before.restarts + 1
    # The gateway, on its old address, embeds queries through the restarted embedder.
    assert localstack.StackState.load(state_dir).gateway == stack.gateway
    assert wait_for("a search", lambda: search_finds(client, *sample))
    log = (state_dir / "logs" / "supervisor.log").read_text(encoding="utf-8")
    entries = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert any(
        e.get("process") == "embedder" and e.get("pid") == after.pid and "restarted" in e["msg"]
        for e in entries
    )
    report = localstack.status(state_dir)
    embedder = next(s for s in report["services"] if s["name"] == "embedder")
    assert embedder["restarts"] == after.restarts and embedder["serving"]


def test_visearch_restart_of_one_process(stack, client, sample):
    state_dir = Path(stack.state_dir)
    before = process(state_dir, "indexer-0")
    others = {p.name: p.pid for p in localstack.StackState.load(state_dir).processes}
    runner = CliRunner()
    result = runner.invoke(app, ["restart", "indexer-0", "--state-dir", str(state_dir)])
    assert result.exit_code == 0, result.output
    after = process(state_dir, "indexer-0")
    assert after.pid != before.pid and after.address == before.address
    assert serving(state_dir, "indexer-0")  # restart returns once it serves
    now = {p.name: p.pid for p in localstack.StackState.load(state_dir).processes}
    assert {n: p for n, p in now.items() if n != "indexer-0"} == {
        n: p for n, p in others.items() if n != "indexer-0"
    }
    assert wait_for("a complete search", lambda: search_finds(client, *sample))
    unknown = runner.invoke(app, ["restart", "indexr-0", "--state-dir", str(state_dir)])
    assert unknown.exit_code == 1
    assert "valid names" in unknown.output and "indexer-0" in unknown.output


def test_up_restarts_dead_processes_instead_of_a_new_stack(stack, client, sample):
    state_dir = Path(stack.state_dir)
    state = localstack.StackState.load(state_dir)
    verifier = process(state_dir, "verifier")
    localstack.stop_processes([state.supervisor])  # nothing restarts the verifier now
    os.kill(verifier.pid, signal.SIGKILL)
    wait_for("the verifier's death", lambda: not localstack.pid_alive(verifier.pid))
    result = CliRunner().invoke(app, ["up", "--state-dir", str(state_dir)])
    assert result.exit_code == 0, result.output
    assert "verifier" in result.output
    repaired = localstack.StackState.load(state_dir)
    assert repaired.gateway == stack.gateway
    assert repaired.supervisor is not None and repaired.supervisor.pid != state.supervisor.pid
    assert localstack.pid_alive(repaired.supervisor.pid)
    after = process(state_dir, "verifier")
    assert after.address == verifier.address and serving(state_dir, "verifier")
    assert {p.name: p.pid for p in repaired.processes if p.name != "verifier"} == {
        p.name: p.pid for p in state.processes if p.name != "verifier"
    }
    assert wait_for("a search", lambda: search_finds(client, *sample))
