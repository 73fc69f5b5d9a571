"""`visearch keys create|list|revoke`: API keys of the gateway (the caller needs admin:*)."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from services.common.api_keys import generate_key
from services.common.errors import VisearchError
from visearch import localstack
from visearch.client import ApiKeyInfo, VisearchClient

keys_app = typer.Typer(help="API keys: create (the secret is shown once), list, revoke.")
console = Console(stderr=True)
out = Console()

GatewayOption = Annotated[
    str, typer.Option("--gateway", envvar="VISEARCH_GATEWAY", help="Gateway host:port.")
]
StateDirOption = Annotated[
    Path, typer.Option("--state-dir", help="Folder of the local stack's state.")
]


def _client(gateway: str, state_dir: Path) -> VisearchClient:
    address = gateway
    if not address:
        state = localstack.StackState.load(state_dir.resolve())
        if state is None:
            console.print(f"[red]No gateway given and no local stack in {state_dir}.[/]")
            raise typer.Exit(2)
        address = state.gateway
    return VisearchClient(
        address,
        tls=localstack.gateway_tls(gateway, state_dir),
        api_key=localstack.gateway_api_key(gateway, state_dir),
    )


def _when(timestamp: float) -> str:
    if timestamp <= 0:
        return ""
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _row(info: ApiKeyInfo) -> dict[str, object]:
    return {
        "id": info.id,
        "name": info.name,
        "grants": info.grants,
        "created_at": info.created_at,
        "revoked_at": info.revoked_at,
    }


@keys_app.command("create")
def create(
    name: Annotated[str, typer.Option("--name", help="What the key is for.")],
    role: Annotated[
        list[str],
        typer.Option(
            "--role", help="A grant <read|write|admin>:<collection or *>; repeat for more."
        ),
    ],
    gateway: GatewayOption = "",
    state_dir: StateDirOption = localstack.DEFAULT_STATE_DIR,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Create a key and print it once: the gateway keeps only its hash."""
    try:
        with _client(gateway, state_dir) as client:
            secret, info = client.create_api_key(name, role)
    except VisearchError as exc:
        console.print(f"[red]{exc.status}[/]: {exc.message}")
        raise typer.Exit(1) from exc
    if as_json:
        out.print_json(json.dumps({**_row(info), "key": secret}))
        return
    console.print(f"created key {info.id} ({info.name}): {', '.join(info.grants)}")
    console.print("the key is shown only now; pass it as VISEARCH_API_KEY:")
    print(secret)  # noqa: T201 - plain stdout, for `KEY=$(visearch keys create ...)`


@keys_app.command("generate")
def generate() -> None:
    """Print a new random key without registering it (for VISEARCH_BOOTSTRAP_API_KEY or the
    Kubernetes Secret visearch-api-key: the gateway registers it as admin:* at start)."""
    print(generate_key())  # noqa: T201 - plain stdout, for $(visearch keys generate)


@keys_app.command("list")
def list_keys(
    gateway: GatewayOption = "",
    state_dir: StateDirOption = localstack.DEFAULT_STATE_DIR,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List keys (ids, names, grants, creation and revocation times; never secrets)."""
    try:
        with _client(gateway, state_dir) as client:
            keys = client.list_api_keys()
    except VisearchError as exc:
        console.print(f"[red]{exc.status}[/]: {exc.message}")
        raise typer.Exit(1) from exc
    if as_json:
        out.print_json(json.dumps([_row(k) for k in keys]))
        return
    table = Table("id", "name", "grants", "created", "revoked")
    for k in keys:
        table.add_row(k.id, k.name, " ".join(k.grants), _when(k.created_at), _when(k.revoked_at))
    out.print(table)


@keys_app.command("revoke")
def revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (from `visearch keys list`).")],
    gateway: GatewayOption = "",
    state_dir: StateDirOption = localstack.DEFAULT_STATE_DIR,
) -> None:
    """Revoke a key: refused from its next call on (its record stays listed)."""
    try:
        with _client(gateway, state_dir) as client:
            info = client.revoke_api_key(key_id)
    except VisearchError as exc:
        console.print(f"[red]{exc.status}[/]: {exc.message}")
        raise typer.Exit(1) from exc
    out.print(f"revoked {info.id} ({info.name}) at {_when(info.revoked_at)}")
