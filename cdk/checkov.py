"""Checkov: the checks this design does not meet, each justified in the template itself.

Checkov reads ``Metadata.checkov.skip`` on a CloudFormation resource as an acknowledged finding (it then reports the
check as skipped, with the comment). Like the cdk-nag acknowledgments in ``nag.py``, each one names one check on one
resource with the reason; docs/cloud.md lists the same table and tests/test_cdk_lint.py runs checkov on the
synthesized templates (``make checkov`` installs it) and fails on any check that is neither passed nor skipped here.
"""
from __future__ import annotations

from aws_cdk import CfnResource, Stack
from aws_cdk import custom_resources as cr
from constructs import IConstruct

# check id -> the reason, per kind of resource it applies to (docs/cloud.md, "checkov").
LOG_GROUP_KMS = (
    "CKV_AWS_158",
    "CloudWatch Logs encrypts every log group at rest with AWS-owned keys; a customer-managed KMS key ($1/month per "
    "key plus a key policy for the logs service) would protect job progress lines and rejected-flow records, which "
    "hold no secrets. Retention is set on every group.",
)
ACCESS_LOG_BUCKET_LOGGING = (
    "CKV_AWS_18",
    "This is the server-access-log bucket itself: logging it would need a third bucket (or log into itself, which "
    "AWS advises against because it loops). It is private, TLS-only, versioned and expires objects after 90 days.",
)
PROVIDER_LAMBDA = {
    "CKV_AWS_115": "CDK's own custom-resource provider (it strips the VPC's default security group, empties a bucket "
    "on destroy, or makes the deploy-time SDK calls: raise the run's group to one instance, read the AMI's root "
    "device): CloudFormation calls it a few times per deploy or destroy, so a reserved-concurrency limit guards nothing.",
    "CKV_AWS_116": "CDK's own custom-resource provider: CloudFormation invokes it synchronously and receives its "
    "failure as a failed resource; a dead-letter queue would hold events nobody replays.",
    "CKV_AWS_117": "CDK's own custom-resource provider: it calls only AWS APIs (EC2, S3, Auto Scaling), so it needs no "
    "VPC; putting it in one would need a NAT gateway or interface endpoints for a function that runs seconds per deploy.",
}
# The Lambda behind every AwsCustomResource of a stack (one singleton function).
SDK_CALL_FUNCTION = "AWS" + cr.AwsCustomResource.PROVIDER_FUNCTION_UUID.replace("-", "")


def skip(resource: CfnResource, check_id: str, comment: str) -> None:
    """Add one ``checkov: skip`` entry to the resource's metadata (merged with earlier ones)."""
    meta = resource.get_metadata("checkov") or {}
    entries = [e for e in meta.get("skip", []) if e["id"] != check_id]
    resource.add_metadata("checkov", {"skip": [*entries, {"id": check_id, "comment": comment}]})


def _cfn_resources(stack: Stack) -> list[CfnResource]:
    return [c for c in stack.node.find_all() if isinstance(c, CfnResource)]


def acknowledge_checkov(stack: Stack, *, access_log_bucket: IConstruct | None) -> None:
    """Justify, resource by resource, the checkov checks this stack does not meet."""
    for res in _cfn_resources(stack):
        if res.cfn_resource_type == "AWS::Logs::LogGroup":
            skip(res, *LOG_GROUP_KMS)
        elif res.cfn_resource_type == "AWS::Lambda::Function" and (
                "CustomResourceProvider" in res.node.path or f"/{SDK_CALL_FUNCTION}/" in res.node.path):
            for check_id, comment in PROVIDER_LAMBDA.items():
                skip(res, check_id, comment)
    if access_log_bucket is None:  # an existing artifacts bucket: this stack creates no log bucket
        return
    bucket = access_log_bucket.node.default_child
    assert isinstance(bucket, CfnResource)
    skip(bucket, *ACCESS_LOG_BUCKET_LOGGING)
