"""Registry commands: `ccd registry list|show|history|promote|rollback|prune`."""

from __future__ import annotations

import argparse
import json

from ccd import registry
from ccd.cli.common import add_command, config_of, emit, home_of, table
from ccd.errors import BadInputError
from ccd.home import Home
from ccd.registry import Decision, ModelVersion

DECISION_COLUMNS = ["id", "decided_at", "name", "version", "kind", "promoted", "previous_production", "reason"]


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("registry", help="model versions, aliases and promotions", description=__doc__)
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    listing = add_command(actions, "list", run_list, "list registered model versions")
    listing.add_argument("--name", default=None, help="only this model (e.g. student)")

    show = add_command(actions, "show", run_show, "show one version and its decisions", settings=False)
    show.add_argument("name")
    show.add_argument("ref", nargs="?", default=registry.PRODUCTION, help="version number or alias (default production)")

    history = add_command(actions, "history", run_history, "the decision log: gate results, promotions, rollbacks", settings=False)
    history.add_argument("name", nargs="?", default=None)

    promote = add_command(actions, "promote", run_promote, "make a version production (by hand, or through the gate with --gate)")
    promote.add_argument("name")
    promote.add_argument("version", type=int)
    promote.add_argument("--reason", default="manual promotion", help="recorded in the decision log")
    promote.add_argument("--gate", action="store_true", help="apply the promotion gate (config section `registry`) instead of forcing")

    rollback = add_command(actions, "rollback", run_rollback, "point production back to the version it replaced", settings=False)
    rollback.add_argument("name")
    rollback.add_argument("--reason", default="rollback", help="recorded in the decision log")

    prune = add_command(actions, "prune", run_prune, "remove the registry's copies of old versions (their records stay)",
                        settings=False)
    prune.add_argument("name")
    prune.add_argument("--keep", type=int, required=True,
                       help="keep the newest KEEP versions, the KEEP that rollbacks from production reach, "
                            "and every aliased or not yet proposed version")
    prune.add_argument("--dry-run", action="store_true", help="only say what would be removed")


def run_list(args: argparse.Namespace) -> int:
    metric = config_of(args).registry.metric
    versions = registry.list_versions(home_of(args), args.name)
    rows = [_row(v, metric) for v in versions]
    columns = ["name", "version", "block", "method", metric, "n_params", "status", "aliases", "created_at", "pruned_at"]
    emit(args, {"versions": [v.to_dict() for v in versions]}, lambda: table(rows, columns))
    return 0


def run_show(args: argparse.Namespace) -> int:
    home = home_of(args)
    version = registry.get(home, args.name, args.ref)
    decisions = registry.list_decisions(home, args.name, version.version)
    emit(
        args,
        {"version": version.to_dict(), "decisions": [d.to_dict() for d in decisions]},
        lambda: _describe(version) + "\n\n" + table([d.to_dict() for d in decisions], DECISION_COLUMNS),
    )
    return 0


def run_history(args: argparse.Namespace) -> int:
    decisions = [d.to_dict() for d in registry.list_decisions(home_of(args), args.name)]
    emit(args, {"decisions": decisions}, lambda: table(decisions, DECISION_COLUMNS))
    return 0


def run_promote(args: argparse.Namespace) -> int:
    home = home_of(args)
    if args.gate:
        decision = registry.propose(home, args.name, args.version, config_of(args).registry)
    elif args.config or args.overrides:
        raise BadInputError("--config and --set give the gate's settings: they apply only with --gate")
    else:
        decision = registry.promote(home, args.name, args.version, args.reason)
    _report(args, home, decision)
    return 0


def run_rollback(args: argparse.Namespace) -> int:
    home = home_of(args)
    _report(args, home, registry.rollback(home, args.name, args.reason))
    return 0


def run_prune(args: argparse.Namespace) -> int:
    result = registry.prune(home_of(args), args.name, args.keep, args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    emit(
        args,
        {**result.to_dict(), "dry_run": args.dry_run},
        lambda: f"{args.name}: {verb} the copies of {len(result.pruned)} version(s), {result.freed_bytes / 2**20:.1f} MiB; "
        f"kept v{', v'.join(map(str, result.kept))}\n\n" + table([v.to_dict() for v in result.pruned], ["version", "block", "status", "artifact"]),
    )
    return 0


def _report(args: argparse.Namespace, home: Home, decision: Decision) -> None:
    production = registry.aliases(home, decision.name).get(registry.PRODUCTION)
    verdict = "promoted to production" if decision.promoted else "not promoted"
    emit(
        args,
        {"decision": decision.to_dict(), "production": production},
        lambda: f"{decision.name} v{decision.version} {verdict} ({decision.kind}): {decision.reason}\n"
        + (f"production is now v{production}" if production else f"{decision.name} has no production"),
    )


def _row(version: ModelVersion, metric: str) -> dict:
    row = version.to_dict()
    row[metric] = version.metrics.get(metric)
    row["aliases"] = ",".join(version.aliases)
    return row


def _describe(version: ModelVersion) -> str:
    fields = version.to_dict()
    fields["aliases"] = ", ".join(version.aliases) or "-"
    for key in ("metrics", "lineage", "config"):
        fields[key] = json.dumps(fields[key], sort_keys=True)
    width = max(len(k) for k in fields)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in fields.items())
