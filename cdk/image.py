"""Image: how the job container reaches the instance: built there from the shipped source (default), built by
``cdk deploy`` with local Docker and pushed to the bootstrap ECR repository (``image=asset``), or pulled (a URI)."""
from __future__ import annotations

from pathlib import Path

from aws_cdk import Aws, Fn, IgnoreMode
from aws_cdk import aws_ecr_assets as ecr_assets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3_assets as s3_assets
from constructs import Construct

from . import constants as C

REPO_ROOT = Path(__file__).resolve().parent.parent


def ecr_repository_arn(account: str, region: str, repository: str) -> str:
    return Fn.join("", ["arn:", Fn.ref("AWS::Partition"), f":ecr:{region}:{account}:repository/{repository}"])


class JobImage(Construct):
    """The job image for one run, and what the instance needs to get it.

    ``uri`` is empty in build mode (the run script builds ``docker/Dockerfile`` from ``source_asset``), else the image
    to pull; ``registry``/``registry_region`` are set when that image lives in ECR, and ``repository_arn`` is the one
    repository the instance role may pull from.
    """

    def __init__(self, scope: Construct, construct_id: str, *, image: str, ecr_repository: tuple[str, str, str] | None) -> None:
        super().__init__(scope, construct_id)
        self.mode = image if image in (C.IMAGE_BUILD, C.IMAGE_ASSET) else "uri"
        self.uri = ""
        self.registry = ""
        self.registry_region = ""
        self.repository_arn: str | None = None
        self.source_asset: s3_assets.Asset | None = None
        self.docker_asset: ecr_assets.DockerImageAsset | None = None
        if self.mode == C.IMAGE_BUILD:
            # The repository minus local state; the instance unzips it and runs `docker build -f docker/Dockerfile`.
            self.source_asset = s3_assets.Asset(self, "JobSource", path=str(REPO_ROOT), exclude=list(C.SOURCE_ASSET_EXCLUDES))
        elif self.mode == C.IMAGE_ASSET:
            # Built by the CDK CLI at deploy time (needs Docker where `cdk deploy` runs), pushed to the bootstrap
            # stack's container-assets repository. The build context is the repository root filtered by
            # .dockerignore, exactly as `docker build -f docker/Dockerfile .` sees it.
            self.docker_asset = ecr_assets.DockerImageAsset(
                self,
                "JobImage",
                directory=str(REPO_ROOT),
                file=C.DOCKERFILE,
                platform=ecr_assets.Platform.LINUX_AMD64,
                ignore_mode=IgnoreMode.DOCKER,
            )
            self.uri = self.docker_asset.image_uri
            self.registry = f"{Aws.ACCOUNT_ID}.dkr.ecr.{Aws.REGION}.{Aws.URL_SUFFIX}"
            self.registry_region = Aws.REGION
            self.repository_arn = self.docker_asset.repository.repository_arn
        else:
            self.uri = image
            if ecr_repository:
                account, region, repository = ecr_repository
                self.registry = f"{account}.dkr.ecr.{region}.amazonaws.com"
                self.registry_region = region
                self.repository_arn = ecr_repository_arn(account, region, repository)

    def grant_pull(self, role: iam.IRole) -> None:
        """ECR pull rights on the one repository the image lives in (nothing for build mode or a public image)."""
        if not self.repository_arn:
            return
        # GetAuthorizationToken has no resource-level permissions (acknowledged in nag.py).
        role.add_to_principal_policy(iam.PolicyStatement(sid="EcrLogin", actions=["ecr:GetAuthorizationToken"], resources=["*"]))
        role.add_to_principal_policy(
            iam.PolicyStatement(
                sid="EcrPull",
                actions=["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"],
                resources=[self.repository_arn],
            )
        )
