"""Compute: the one-shot GPU instance (Deep Learning AMI, IMDSv2, encrypted gp3 root) and the user-data that runs the job."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

from aws_cdk import Fn
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3_assets as s3_assets
from constructs import Construct

from . import constants as C
from .network import IMPORTED_SUBNET_AZ

SCRIPTS_DIR = Path(__file__).resolve().parent / "scripts"
REPO_ROOT = Path(__file__).resolve().parent.parent
RUN_SCRIPT = SCRIPTS_DIR / "user_data.sh"

_SHUTDOWN = {
    "terminate": ec2.InstanceInitiatedShutdownBehavior.TERMINATE,
    "stop": ec2.InstanceInitiatedShutdownBehavior.STOP,
}


def _heredoc(path: str, lines: Sequence[str], tag: str) -> list[str]:
    """Shell lines writing ``lines`` verbatim to ``path`` (quoted heredoc: no expansion on the instance)."""
    for line in lines:
        if "\n" in line or line.strip() == tag:
            raise ValueError(f"cannot embed {line!r} in a heredoc")
    return [f"cat > {path} <<'{tag}'", *lines, tag, f"chmod 0644 {path}"]


class JobInstance(Construct):
    """A single instance that runs ``cdk/scripts/user_data.sh`` once and powers itself off.

    ``ec2.Instance`` carries everything nag and cfn-lint look at (IMDSv2, encrypted root, monitoring, shutdown
    behaviour). Spot needs a launch template, since AWS::EC2::Instance has no market option: a tiny one holding only
    the spot options is attached to the instance.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        security_group: ec2.ISecurityGroup,
        instance_type: str,
        market: str,
        shutdown_behavior: str,
        root_volume_gb: int,
        ami_ssm_parameter: str,
        run_env: Mapping[str, str],
        job_args: Sequence[str],
        max_run_minutes: int,
        build_image: bool,
        region: str,
    ) -> None:
        super().__init__(scope, construct_id)
        self.role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"),
            description="vit-embed job instance: read sources, write its run prefix, logs, SSM",
        )

        # The real script, shipped as an asset; the source tree too when the image is built on the instance.
        self.script_asset = s3_assets.Asset(self, "RunScript", path=str(RUN_SCRIPT))
        self._grant_asset(self.script_asset)
        self.source_asset: s3_assets.Asset | None = None
        if build_image:
            self.source_asset = s3_assets.Asset(
                self, "JobSource", path=str(REPO_ROOT), exclude=list(C.SOURCE_ASSET_EXCLUDES)
            )
            self._grant_asset(self.source_asset)

        self.user_data = ec2.UserData.for_linux()
        ud = self.user_data
        ud.add_commands(
            "set -euo pipefail",
            # Hard stop first, before anything can fail: the OS powers off after max_run_hours whatever happens.
            f"shutdown -h +{max_run_minutes} 'vit-embed: max_run_hours reached'",
            # If bootstrapping fails before the run script takes over, power off now rather than idle until the deadline.
            "trap 'rc=$?; [ \"$rc\" -eq 0 ] || shutdown -h now' EXIT",
            f"install -d -m 0755 {C.INSTANCE_ETC} {os.path.dirname(C.SCRIPT_PATH)}",
            *_heredoc(C.RUN_ENV_FILE, [f"{k}={v}" for k, v in run_env.items()], "VIT_EMBED_ENV"),
            f"echo \"DEADLINE_EPOCH=$(( $(date +%s) + {max_run_minutes * 60} ))\" >> {C.RUN_ENV_FILE}",
            *_heredoc(C.JOB_ARGS_FILE, list(job_args), "VIT_EMBED_ARGS"),
        )
        script = ud.add_s3_download_command(
            bucket=self.script_asset.bucket,
            bucket_key=self.script_asset.s3_object_key,
            local_file=C.SCRIPT_PATH,
            region=region,
        )
        if self.source_asset is not None:
            ud.add_s3_download_command(
                bucket=self.source_asset.bucket,
                bucket_key=self.source_asset.s3_object_key,
                local_file=C.SOURCE_ZIP_PATH,
                region=region,
            )
        ud.add_execute_file_command(file_path=script, arguments=f"{C.RUN_ENV_FILE} {C.JOB_ARGS_FILE}")

        self.instance = ec2.Instance(
            self,
            "Instance",
            vpc=vpc,
            vpc_subnets=subnets,
            security_group=security_group,
            instance_type=ec2.InstanceType(instance_type),
            machine_image=ec2.MachineImage.from_ssm_parameter(ami_ssm_parameter, os=ec2.OperatingSystemType.LINUX),
            role=self.role,
            ssm_session_permissions=True,
            user_data=self.user_data,
            user_data_causes_replacement=True,
            http_tokens=ec2.HttpTokens.REQUIRED,
            http_endpoint=True,
            http_put_response_hop_limit=C.IMDS_HOP_LIMIT,
            instance_initiated_shutdown_behavior=_SHUTDOWN[shutdown_behavior],
            detailed_monitoring=True,
            ebs_optimized=True,
            propagate_tags_to_volume_on_creation=True,
            block_devices=[
                ec2.BlockDevice(
                    device_name=C.ROOT_DEVICE_NAME,
                    volume=ec2.BlockDeviceVolume.ebs(
                        root_volume_gb,
                        volume_type=ec2.EbsDeviceVolumeType.GP3,
                        encrypted=True,
                        delete_on_termination=True,
                    ),
                )
            ],
        )
        cfn = self.instance.node.default_child
        assert isinstance(cfn, ec2.CfnInstance)
        if subnets.subnets and subnets.subnets[0].availability_zone == IMPORTED_SUBNET_AZ:
            cfn.add_property_deletion_override("AvailabilityZone")  # SubnetId alone places the instance
        if market == "spot":
            self.spot_template = ec2.LaunchTemplate(
                self,
                "SpotTemplate",
                spot_options=ec2.LaunchTemplateSpotOptions(
                    request_type=ec2.SpotRequestType.ONE_TIME,
                    interruption_behavior=ec2.SpotInstanceInterruption.TERMINATE,
                ),
                require_imdsv2=True,
            )
            cfn.launch_template = ec2.CfnInstance.LaunchTemplateSpecificationProperty(
                launch_template_id=self.spot_template.launch_template_id,
                version=self.spot_template.latest_version_number,
            )

    def _grant_asset(self, asset: s3_assets.Asset) -> None:
        """Read exactly this asset object (``asset.grant_read`` would allow the whole bootstrap bucket)."""
        self.role.add_to_policy(
            iam.PolicyStatement(actions=["s3:GetObject"], resources=[asset.bucket.arn_for_objects(asset.s3_object_key)])
        )

    @property
    def instance_id(self) -> str:
        return self.instance.instance_id


def ecr_repository_arn(account: str, region: str, repository: str) -> str:
    return Fn.join("", ["arn:", Fn.ref("AWS::Partition"), f":ecr:{region}:{account}:repository/{repository}"])
