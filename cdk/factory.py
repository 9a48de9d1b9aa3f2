"""Factory: build the App, read the config from its context once, add the stack and the cdk-nag checks."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from aws_cdk import App, Environment, Validations
from cdk_nag import AwsSolutionsChecks

from .config import RunConfig, from_context
from .nag import acknowledge_findings
from .stack import EmbeddingRunStack

CDK_JSON = Path(__file__).resolve().parent.parent / "cdk.json"


def cdk_json_context() -> dict[str, Any]:
    """The ``context`` block of the repository's cdk.json (what the CLI feeds the app)."""
    return dict(json.loads(CDK_JSON.read_text()).get("context", {}))


def create_app(
    context: Mapping[str, Any] | None = None, *, outdir: str | None = None, nag: bool = True
) -> tuple[App, EmbeddingRunStack]:
    """The app with its one stack. ``context`` is added on top of what the CLI passes (tests pass cdk.json's)."""
    app = App(context=dict(context or {}), outdir=outdir)
    config: RunConfig = from_context(app.node.try_get_context)
    # Region only, no account: the stack stays environment-agnostic for the account, so synth needs no credentials
    # and makes no AWS call (AZs come from Fn::GetAZs, the AMI from an SSM parameter resolved at deploy time).
    stack = EmbeddingRunStack(
        app,
        "EmbeddingRun",
        stack_name=config.stack_name,
        config=config,
        env=Environment(region=config.region),
        description=f"vit-embed: one {config.instance_type} run of python -m job run ({config.dataset}, run {config.run_id})",
    )
    if nag:
        Validations.of(app).add_plugins(AwsSolutionsChecks(app))
        acknowledge_findings(stack)
    return app, stack
