"""snap key list | add | remove ID | passwd: manage the passwords that open the repository."""

from __future__ import annotations

import click
from rich.table import Table

from .app import App, UsageError, pass_app, prompt_password, read_password_file


def _new_password(app: App, new_password_file: str | None) -> bytes:
    if new_password_file:
        pw = read_password_file(new_password_file)
    elif app.interactive:
        pw = prompt_password("enter new password: ", confirm=True)
    else:
        raise UsageError("no new password given: use --new-password-file")
    if not pw:
        raise UsageError("an empty password is not allowed")
    return pw


@click.group("key")
def command() -> None:
    """Manage the keys (passwords) of the repository."""


@command.command("list")
@pass_app
def key_list(app: App) -> None:
    """List the keys."""
    repo = app.open_repo()
    keys = repo.list_keys()
    if app.json:
        app.emit_json([{"id": k.id, "current": k.current, "created": k.created,
                        "hostname": k.hostname, "username": k.username, "damaged": k.damaged}
                       for k in keys])
        return
    table = Table(box=None)
    for col in (" ", "ID", "User", "Host", "Created"):
        table.add_column(col)
    for k in keys:
        table.add_row("*" if k.current else "", k.id[:8], k.username,
                      "(damaged: remove it)" if k.damaged else k.hostname,
                      k.created[:19].replace("T", " "))
    if not app.quiet:
        app.console.print(table)


@command.command("add")
@click.option("--new-password-file", metavar="FILE", help="Read the new password from FILE.")
@pass_app
def key_add(app: App, new_password_file: str | None) -> None:
    """Add a key: another password that opens the repository."""
    repo = app.open_repo()
    kid = repo.add_key(_new_password(app, new_password_file))
    app.emit_json({"id": kid}) if app.json else app.info(f"saved new key as {kid[:8]}")


@command.command("remove")
@click.argument("key_id")
@pass_app
def key_remove(app: App, key_id: str) -> None:
    """Remove a key (not the one in use, never the last)."""
    repo = app.open_repo()
    removed = repo.remove_key(key_id)
    app.emit_json({"removed": removed}) if app.json else app.info(f"removed key {removed[:8]}")


@command.command("passwd")
@click.option("--new-password-file", metavar="FILE", help="Read the new password from FILE.")
@pass_app
def key_passwd(app: App, new_password_file: str | None) -> None:
    """Change the password of the key in use."""
    repo = app.open_repo()
    kid = repo.change_password(_new_password(app, new_password_file))
    app.emit_json({"id": kid}) if app.json else app.info(f"password changed; new key {kid[:8]}")
