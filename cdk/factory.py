"""Factory: build the App, read the config from its context once, add the stack and the cdk-nag checks."""
from __future__ import annotations

from typing import Any, Mapping

from aws_cdk import App, Environment, Validations
from cdk_nag import AwsSolutionsChecks

from .batch_stack import BatchRunStack
from .checkov import acknowledge_checkov
from .config import CDK_JSON, RunConfig, cdk_json_context, from_context  # noqa: F401 (re-exported)
from .nag import acknowledge_batch_findings, acknowledge_findings
from .stack import EmbeddingRunStack


def create_app(
    context: Mapping[str, Any] | None = None, *, outdir: str | None = None, nag: bool = True
) -> tuple[App, EmbeddingRunStack | BatchRunStack]:
    """The app with its one stack. ``context`` is added on top of what the CLI passes (tests pass cdk.json's)."""
    app = App(context=dict(context or {}), outdir=outdir)
    config: RunConfig = from_context(app.node.try_get_context)
    # Region only, no account: the stack stays environment-agnostic for the account, so synth needs no credentials
    # and makes no AWS call (AZs come from Fn::GetAZs, the AMI from an SSM parameter resolved at deploy time).
    # `make preflight` (cdk/preflight.py) is where the account is asked what synth cannot know.
    kind: type[EmbeddingRunStack] | type[BatchRunStack]
    if config.batch:  # -c engine=batch: N shards on AWS Batch, then the merge (cdk/batch_stack.py)
        kind, what = BatchRunStack, (f"{config.shards} shard(s) of python -m job run on AWS Batch "
                                     f"({'/'.join(config.instance_types)}), then job merge")
    else:
        kind, what = EmbeddingRunStack, f"one {'/'.join(config.instance_types)} run of python -m job run"
    stack = kind(app, "EmbeddingRun", stack_name=config.stack_name, config=config,
                 env=Environment(region=config.region),
                 description=f"vit-embed: {what} ({config.dataset}, run {config.run_id})")
    if nag:
        Validations.of(app).add_plugins(AwsSolutionsChecks(app))
        if isinstance(stack, BatchRunStack):
            acknowledge_batch_findings(stack)
        else:
            acknowledge_findings(stack)
    acknowledge_checkov(stack, access_log_bucket=stack.storage.access_logs)
    return app, stack
