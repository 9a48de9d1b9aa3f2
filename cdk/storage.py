"""Storage: the artifacts bucket (runs/<run-id>/ in the OUTDIR layout) and its server-access-log bucket, or an
existing bucket (``artifacts_bucket``: the one a destroyed stack kept, so that a run resumes where it stopped)."""
from __future__ import annotations

from typing import Any

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_s3 as s3
from constructs import Construct

from . import constants as C


class Storage(Construct):
    """Encrypted, versioned, TLS-only, non-public buckets; old runs age out through lifecycle rules.

    ``existing``: write to that bucket instead (imported by name, never modified or deleted by this stack), and
    create no access-log bucket: the existing bucket keeps the logging it has.

    The access-log bucket is always kept by ``cdk destroy``, also with ``retain=False``: S3 delivers server access
    logs late (minutes to hours after the request), so logs of the artifacts bucket's own emptying keep landing in it
    after any auto-delete has emptied it, and its deletion then fails the destroy with BucketNotEmpty (aws-cdk
    #16332, #21776). Its lifecycle rule expires what it holds (90 days).

    A kept bucket keeps its bucket policy too (the TLS-only rule; on the access-log bucket, the grant that lets the
    logging service deliver): CDK creates the policy as a resource of its own, deleted by default even when the
    bucket is retained, which would leave a kept bucket reachable over plain HTTP and stop its access logging.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        retain: bool = True,
        artifact_retention_days: int = C.DEFAULT_ARTIFACT_RETENTION_DAYS,
        existing: str | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        self.imported = existing is not None
        self.access_logs: s3.Bucket | None = None
        if existing is not None:
            self.artifacts: s3.IBucket = s3.Bucket.from_bucket_name(self, "Artifacts", existing)
            return
        removal = RemovalPolicy.RETAIN if retain else RemovalPolicy.DESTROY
        common: dict[str, Any] = dict(
            encryption=s3.BucketEncryption.S3_MANAGED,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
        )
        self.access_logs = s3.Bucket(
            self,
            "AccessLogs",
            # Versioned like the artifacts (a deleted or overwritten log object stays recoverable for a while).
            versioned=True,
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="expire-access-logs",
                    expiration=Duration.days(C.ACCESS_LOG_RETENTION_DAYS),
                    noncurrent_version_expiration=Duration.days(C.NONCURRENT_VERSION_DAYS),
                ),
                s3.LifecycleRule(id="abort-multipart", abort_incomplete_multipart_upload_after=Duration.days(C.ABORT_MULTIPART_DAYS)),
            ],
            removal_policy=RemovalPolicy.RETAIN,  # never auto-deleted: late log deliveries (class docstring)
            **common,
        )
        _policy_goes_with(self.access_logs, RemovalPolicy.RETAIN)
        runs_rule = s3.LifecycleRule(
            id="age-out-runs",
            prefix=f"{C.RUNS_PREFIX}/",
            transitions=[
                s3.Transition(storage_class=s3.StorageClass.INFREQUENT_ACCESS, transition_after=Duration.days(C.IA_TRANSITION_DAYS))
            ]
            if not artifact_retention_days or artifact_retention_days > C.IA_TRANSITION_DAYS
            else None,
            expiration=Duration.days(artifact_retention_days) if artifact_retention_days else None,
        )
        self.artifacts = s3.Bucket(
            self,
            "Artifacts",
            versioned=True,
            server_access_logs_bucket=self.access_logs,
            server_access_logs_prefix="artifacts/",
            lifecycle_rules=[
                runs_rule,
                s3.LifecycleRule(
                    id="expire-noncurrent-versions",
                    noncurrent_version_expiration=Duration.days(C.NONCURRENT_VERSION_DAYS),
                    expired_object_delete_marker=True,
                ),
                s3.LifecycleRule(id="abort-multipart", abort_incomplete_multipart_upload_after=Duration.days(C.ABORT_MULTIPART_DAYS)),
            ],
            removal_policy=removal,
            auto_delete_objects=not retain,
            **common,
        )
        _policy_goes_with(self.artifacts, removal)


def _policy_goes_with(bucket: s3.Bucket, removal: RemovalPolicy) -> None:
    """The bucket's policy (TLS-only, log delivery) is removed or kept exactly like the bucket (class docstring)."""
    assert bucket.policy is not None  # enforce_ssl=True always creates one
    bucket.policy.apply_removal_policy(removal)
