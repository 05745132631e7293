"""snap forget: remove snapshots by id or by a retention policy (restic's rules), then
optionally prune."""

from __future__ import annotations

import click
from rich.table import Table

from dedupe.forget import KeepPolicy, groups_removing_all, parse_count, parse_duration, plan_forget
from dedupe.snapgroups import parse_group_by, parse_tag_list

from .app import App, UsageError, pass_app
from .cmd_prune import prune_options, run_prune
from .selection import make_filter

_COUNTS = ("last", "hourly", "daily", "weekly", "monthly", "yearly")
_WITHIN = ("within", "within_hourly", "within_daily", "within_weekly", "within_monthly",
           "within_yearly")


def _policy_options(f):
    for rule in reversed(_WITHIN):
        flag = "--keep-" + rule.replace("_", "-")
        f = click.option(flag, rule, metavar="DURATION",
                         help=f"Keep snapshots {rule.replace('_', ' ')} this long of the newest "
                              "(e.g. 2y5m7d3h).")(f)
    for rule in reversed(_COUNTS):
        f = click.option(f"--keep-{rule}", rule, metavar="N",
                         help=f"Keep the newest snapshot of the last N {rule} buckets "
                              "('unlimited' for all)." if rule != "last"
                         else "Keep the last N snapshots.")(f)
    return f


def _build_policy(values: dict, keep_tag) -> KeepPolicy:
    try:
        kwargs = {r: parse_count(values[r]) for r in _COUNTS if values[r] is not None}
        kwargs.update({r: parse_duration(values[r]) for r in _WITHIN if values[r] is not None})
        return KeepPolicy(**kwargs, keep_tags=[parse_tag_list(t) for t in keep_tag])
    except ValueError as exc:
        raise UsageError(str(exc)) from None


@click.command("forget")
@click.argument("snapshot_ids", nargs=-1)
@_policy_options
@click.option("--keep-tag", multiple=True, metavar="TAG[,TAG]", help="Keep snapshots with these tags.")
@click.option("--host", "hosts", multiple=True, metavar="HOST", help="Only snapshots of HOST.")
@click.option("--tag", "tags", multiple=True, metavar="TAG[,TAG]", help="Only snapshots with these tags.")
@click.option("--path", "paths", multiple=True, metavar="PATH", help="Only snapshots of PATH.")
@click.option("-g", "--group-by", default="host,paths", show_default=True, metavar="FIELDS",
              help="Apply the policy per group of host, paths and/or tags ('' for one group).")
@click.option("-n", "--dry-run", is_flag=True, help="Only show what would be removed.")
@click.option("--prune", "then_prune", is_flag=True, help="Run prune afterwards.")
@click.option("--unsafe-allow-remove-all", is_flag=True,
              help="Allow a policy to remove every snapshot of a group.")
@prune_options
@pass_app
def command(app: App, snapshot_ids, last, hourly, daily, weekly, monthly, yearly, within,
            within_hourly, within_daily, within_weekly, within_monthly, within_yearly, keep_tag,
            hosts, tags, paths, group_by, dry_run, then_prune, unsafe_allow_remove_all,
            max_unused, max_repack_size) -> None:
    """Remove snapshots: the given ids, or those a --keep-* policy does not keep."""
    values = dict(last=last, hourly=hourly, daily=daily, weekly=weekly, monthly=monthly,
                  yearly=yearly, within=within, within_hourly=within_hourly,
                  within_daily=within_daily, within_weekly=within_weekly,
                  within_monthly=within_monthly, within_yearly=within_yearly)
    policy = _build_policy(values, keep_tag)
    if snapshot_ids and not policy.is_empty():
        raise UsageError("give either snapshot ids or a --keep-* policy, not both")
    if not snapshot_ids and policy.is_empty() and not unsafe_allow_remove_all:
        raise UsageError("no policy was specified, no snapshots will be removed")
    if not snapshot_ids and policy.is_empty() and not (hosts or tags or paths):
        raise UsageError("removing all snapshots needs --host, --tag or --path besides "
                         "--unsafe-allow-remove-all")
    try:
        grouping = parse_group_by(group_by)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    repo = app.open_repo()
    all_snaps = repo.list_snapshots()
    if snapshot_ids:
        remove = []
        for ref in snapshot_ids:
            snap = repo.find_snapshot(ref, all_snaps)
            if snap not in remove:
                remove.append(snap)
        report = [{"remove": [s.to_json() for s in remove]}]
        if not app.json:
            for s in remove:
                app.info(f"{'would remove' if dry_run else 'removing'} snapshot {s.short_id}")
    else:
        snaps = make_filter(hosts, tags, paths).apply(all_snaps)
        plans = plan_forget(snaps, policy, group_by=grouping)
        refused = groups_removing_all(plans)
        if refused and not unsafe_allow_remove_all:
            raise UsageError(f"refusing to remove every snapshot of group {refused[0].key}; "
                             "pass --unsafe-allow-remove-all if that is what you want")
        remove = [d.snapshot for p in plans for d in p.decisions if not d.keep]
        report = [p.to_dict(lambda s: s.to_json()) for p in plans]
        if not app.json:
            app.info(f"Applying policy: {policy.describe()}")
            for plan in plans:
                _show_group(app, plan)
    for snap in remove:
        if not dry_run:
            repo.delete_snapshot(snap.id)
    if app.json:
        app.emit_json(report)
    elif not snapshot_ids:
        app.info(f"{'would remove' if dry_run else 'removed'} {len(remove)} snapshots")
    if then_prune and not dry_run:
        run_prune(app, repo, max_unused, max_repack_size, dry_run=False)


def _show_group(app: App, plan) -> None:
    if app.quiet:
        return
    app.console.print(f"\nsnapshots for {plan.key}", style="bold", markup=False)
    table = Table(box=None, header_style="bold")
    for col in ("ID", "Time", "Host", "Tags", "Decision", "Reasons"):
        table.add_column(col)
    for d in plan.decisions:
        s = d.snapshot
        table.add_row(s.short_id, s.time.astimezone().strftime("%Y-%m-%d %H:%M:%S"), s.hostname,
                      ",".join(s.tags), "keep" if d.keep else "remove",
                      ", ".join(str(r) for r in d.reasons))
    app.console.print(table)
    app.console.print(f"{len(plan.keep)} kept, {len(plan.remove)} removed")
