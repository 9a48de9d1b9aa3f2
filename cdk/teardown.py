"""Before ``cdk destroy``: say what the destroy keeps and the one command that brings the run back.

    python -m cdk.teardown [-c key=value ...]      (make destroy runs it, then npx cdk destroy)

Reads the deployed stack's outputs (CloudFormation DescribeStacks, with your credentials); the context is the app's
own (cdk.json + ``-c``), for the stack's name and region. It changes nothing; exit 2 on a bad context, else 0 (a
stack that is not there, or cannot be read, is said in one line: there is nothing to keep then, or nothing known).
"""
from __future__ import annotations

import sys
from typing import Any, Callable, Sequence

from .config import ConfigError
from .preflight import boto3_clients, cli_parser, config_from_cli
from .preflight_base import error_text

_BUCKETS = {"ArtifactsBucket": "the runs, their logs, the weights cache",
            "AccessLogBucket": "the artifacts bucket's access logs; they expire in 90 days"}


def notes(outputs: dict[str, str]) -> list[str]:
    """What the destroy keeps, what it deletes, and how to resume, from the stack's outputs.

    ``KeptByDestroy`` names the outputs of the buckets the stack retains (cdk/outputs.py); a stack deployed before it
    existed kept both buckets unless deployed with retain_artifacts=false, which is then said as such."""
    lines = []
    kept = outputs.get("KeptByDestroy")
    for key, what in _BUCKETS.items():
        if key not in outputs:
            continue
        if kept is None:
            lines.append(f"kept unless deployed with retain_artifacts=false: s3://{outputs[key]}/ ({what})")
        elif key in kept.split(","):
            lines.append(f"kept: s3://{outputs[key]}/ ({what})")
        else:
            lines.append(f"deleted with the stack (retain_artifacts=false): s3://{outputs[key]}/ ({what})")
    if "RunPrefix" in outputs:
        lines.append(f"run:  {outputs['RunPrefix']} (python -m job status {outputs['RunPrefix']})")
    if "RedeployCommand" in outputs:
        lines.append(f"to resume this run after the destroy, run: {outputs['RedeployCommand']}")
    return lines


def main(argv: Sequence[str] | None = None, client: Callable[[str], Any] | None = None) -> int:
    args = cli_parser("python -m cdk.teardown", __doc__.split("\n\n")[0]).parse_args(argv)
    try:
        cfg = config_from_cli(args)
    except ConfigError as exc:
        print(f"cdk context error: {exc}", file=sys.stderr)
        return 2
    clients = client or boto3_clients(cfg.region)
    try:
        stacks = clients("cloudformation").describe_stacks(StackName=cfg.stack_name)["Stacks"]
    except Exception as exc:
        print(f"teardown: stack {cfg.stack_name} in {cfg.region}: {error_text(exc)}")
        return 0
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}
    print(f"teardown: {cfg.stack_name} in {cfg.region}")
    for line in notes(outputs):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
