"""Compute: the GPU instance as an Auto Scaling group of at most one, over one subnet per AZ (AWS picks the AZ and
falls back through the instance types), created empty and raised to one instance right after (the deploy does not wait
for a GPU), with the launch template (Deep Learning AMI and its own root device, IMDSv2, encrypted gp3 root) and the
user-data that runs the job once."""
from __future__ import annotations

import hashlib
import os
import shlex
from pathlib import Path
from typing import Mapping, Sequence

from aws_cdk import Annotations, Aws, Duration, RemovalPolicy
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3_assets as s3_assets
from aws_cdk import custom_resources as cr
from constructs import Construct

from . import constants as C
from .config import RunConfig
from .network import Network

SCRIPTS_DIR = Path(__file__).resolve().parent / "scripts"
RUN_SCRIPT = SCRIPTS_DIR / "user_data.sh"
STATUS_RULES = Path(__file__).resolve().parents[1] / "job" / "status" / "rules.py"  # the script's _STATUS rules
# How long CloudFormation waits for the custom resources' answers (the SDK calls take seconds; the default is an hour).
CUSTOM_RESOURCE_TIMEOUT = Duration.minutes(5)
ROOT_DEVICE_FIELD = "Images.0.RootDeviceName"


def _heredoc(path: str, lines: Sequence[str], tag: str) -> list[str]:
    """Shell lines writing ``lines`` verbatim to ``path`` (quoted heredoc: no expansion on the instance)."""
    for line in lines:
        if "\n" in line or line.strip() == tag:
            raise ValueError(f"cannot embed {line!r} in a heredoc")
    return [f"cat > {path} <<'{tag}'", *lines, tag, f"chmod 0644 {path}"]


def start_call(group_name: str) -> dict[str, object]:
    """The one Auto Scaling call that starts the run (``JobGroup.start``): SetDesiredCapacity to 1 on the new group.
    Its parameters are boto3's too (the rehearsal makes the same call: tests/test_rehearsal_capacity.py)."""
    return {"AutoScalingGroupName": group_name, "DesiredCapacity": 1, "HonorCooldown": False}


def group_arn(group_name: str) -> str:
    """ARN pattern of the named group (the middle part is a UUID AWS assigns; the name pins the group)."""
    return f"arn:{Aws.PARTITION}:autoscaling:{Aws.REGION}:{Aws.ACCOUNT_ID}:autoScalingGroup:*:autoScalingGroupName/{group_name}"


def release_command(group_name: str, region: str) -> str:
    """The call that sets the group to 0 so that AWS neither keeps nor replaces the instance (min = max = 0)."""
    return (
        f"aws autoscaling update-auto-scaling-group --region {region} --auto-scaling-group-name {shlex.quote(group_name)} "
        "--min-size 0 --max-size 0 --desired-capacity 0"
    )


class JobGroup(Construct):
    """At most one instance that runs ``cdk/scripts/user_data.sh`` once, then sets the group to 0 and powers off.

    Why an Auto Scaling group for one instance: a launch request pinned to one subnet fails when that AZ does not
    offer the type or has no capacity right now (``InsufficientInstanceCapacity``). The group spans one subnet per
    AZ and a list of instance types in order of preference (``MixedInstancesPolicy``), and AWS tries the other AZs
    and types itself. The instance sets min = max = desired = 0 when it finishes (and a schedule outside it does the
    same at the deadline), so a finished instance is not replaced.

    Why the group is created with desired capacity 0 and raised to 1 by ``start``: CloudFormation marks a group
    CREATE_COMPLETE only once its *desired* capacity is in service (the AWS::AutoScaling::AutoScalingGroup reference;
    the minimum size plays no part). A group created at 1 makes the deploy wait for a GPU, and where none can launch
    (a new account's G/VT quota of 0, no capacity for any type in any AZ) the deploy fails there and the whole stack
    rolls back. ``start`` is a custom resource created after the group that sets its desired capacity to 1 once, on
    Create only: the stack completes in minutes, a failed launch is Auto Scaling's to retry (and the launch notes',
    ``launch_notes.py``, to report), and a later deploy of the same run never resets the size — neither this call
    (no Update) nor the template (desired 0 unchanged: CDK's IgnoreUnmodifiedGroupSizeProperties). Its id holds the
    run id, so a new run is a new resource, created (and run) again.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: RunConfig,
        network: Network,
        run_env: Mapping[str, str],
        source_asset: s3_assets.Asset | None,
        log_retention: logs.RetentionDays,
    ) -> None:
        """``config`` gives the run's group name, types, market, root volume, AMI parameter, job options, time limit,
        region and run id; ``run_env`` the script's settings; ``source_asset`` the repository when the instance builds
        the image."""
        super().__init__(scope, construct_id)
        cfg = config
        self.group_name = group_name = cfg.group_name
        instance_types, market, region = cfg.instance_types, cfg.market, cfg.region
        self.role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"),
            managed_policies=[iam.ManagedPolicy.from_aws_managed_policy_name("AmazonSSMManagedInstanceCore")],
            description="vit-embed job instance: read sources, write its run prefix, logs, SSM, release its own group",
        )
        # The instance ends its own run: min = max = desired = 0 on its group, and nothing else.
        self.role.add_to_policy(
            iam.PolicyStatement(
                sid="ReleaseOwnGroup",
                actions=["autoscaling:UpdateAutoScalingGroup"],
                resources=[group_arn(group_name)],
            )
        )

        # The real script, shipped as an asset, with the job's _STATUS rules it runs; the source tree too when the
        # image is built on the instance.
        self.script_asset = s3_assets.Asset(self, "RunScript", path=str(RUN_SCRIPT))
        self._grant_asset(self.script_asset)
        self.rules_asset = s3_assets.Asset(self, "StatusRules", path=str(STATUS_RULES))
        self._grant_asset(self.rules_asset)
        if source_asset is not None:
            self._grant_asset(source_asset)

        self.user_data = self._user_data(
            run_env={**run_env, "ASG_NAME": group_name},
            job_args=cfg.job_args(),
            max_run_minutes=cfg.max_run_minutes,
            source_asset=source_asset,
            region=region,
        )
        machine_image = ec2.MachineImage.from_ssm_parameter(cfg.ami_ssm_parameter, os=ec2.OperatingSystemType.LINUX)
        self.sdk_log_group = logs.LogGroup(self, "SdkCallLogs", retention=log_retention, removal_policy=RemovalPolicy.DESTROY)
        self.root_device = self._root_device(machine_image.get_image(self).image_id)
        self.launch_template = ec2.LaunchTemplate(
            self,
            "Template",
            machine_image=machine_image,
            role=self.role,
            security_group=network.security_group,
            user_data=self.user_data,
            require_imdsv2=True,
            http_tokens=ec2.LaunchTemplateHttpTokens.REQUIRED,
            http_endpoint=True,
            http_put_response_hop_limit=C.IMDS_HOP_LIMIT,
            instance_initiated_shutdown_behavior=ec2.InstanceInitiatedShutdownBehavior.TERMINATE,
            detailed_monitoring=True,
            ebs_optimized=True,
            block_devices=[
                ec2.BlockDevice(
                    device_name=self.root_device.get_response_field(ROOT_DEVICE_FIELD),  # the AMI's own root
                    volume=ec2.BlockDeviceVolume.ebs(
                        cfg.root_volume_gb,
                        volume_type=ec2.EbsDeviceVolumeType.GP3,
                        encrypted=True,
                        delete_on_termination=True,
                    ),
                )
            ],
        )
        spot = market == "spot"
        self.group = autoscaling.AutoScalingGroup(
            self,
            "Group",
            vpc=network.vpc,
            vpc_subnets=network.subnets,
            auto_scaling_group_name=group_name,
            mixed_instances_policy=autoscaling.MixedInstancesPolicy(
                launch_template=self.launch_template,
                launch_template_overrides=[autoscaling.LaunchTemplateOverrides(instance_type=ec2.InstanceType(t)) for t in instance_types],
                instances_distribution=autoscaling.InstancesDistribution(
                    on_demand_base_capacity=0,
                    on_demand_percentage_above_base_capacity=0 if spot else 100,
                    # The list order is the preference: try the first type, then the next.
                    on_demand_allocation_strategy=autoscaling.OnDemandAllocationStrategy.PRIORITIZED,
                    spot_allocation_strategy=autoscaling.SpotAllocationStrategy.CAPACITY_OPTIMIZED_PRIORITIZED,
                ),
            ),
            min_capacity=0,
            max_capacity=1,
            desired_capacity=0,  # raised to 1 by self.start (class docstring): the deploy does not wait for a GPU
            # Replacing an unhealthy instance restarts the run; the deadline bounds how long that can go on.
            health_checks=autoscaling.HealthChecks.ec2(grace_period=Duration.minutes(15)),
            group_metrics=[autoscaling.GroupMetrics(autoscaling.GroupMetric.IN_SERVICE_INSTANCES, autoscaling.GroupMetric.DESIRED_CAPACITY)],
            capacity_rebalance=False,
        )
        # Desired 0 in the template, unchanged from deploy to deploy: CloudFormation leaves the live size alone.
        Annotations.of(self.group).acknowledge_warning(
            "@aws-cdk/aws-autoscaling:desiredCapacitySet", "desired 0 at creation, raised to 1 by a custom resource; "
            "IgnoreUnmodifiedGroupSizeProperties keeps later deploys from resetting it"
        )
        self.start = self._start(group_name, cfg.run_id)
        self.start.node.add_dependency(self.group)

    def _start(self, group_name: str, run_id: str) -> cr.AwsCustomResource:
        """The custom resource that sets the new group's desired capacity to 1 (Create only; class docstring)."""
        run_key = hashlib.sha1(run_id.encode()).hexdigest()[:10]
        return cr.AwsCustomResource(
            self,
            f"Start{run_key}",  # a new run id is a new resource (Create: the call runs), never an update of this one
            resource_type="Custom::StartRun",
            on_create=cr.AwsSdkCall(
                service="AutoScaling",
                action="setDesiredCapacity",
                parameters=start_call(group_name),
                physical_resource_id=cr.PhysicalResourceId.of(group_name),
            ),
            policy=cr.AwsCustomResourcePolicy.from_statements([
                iam.PolicyStatement(sid="StartOwnGroup", actions=["autoscaling:SetDesiredCapacity"],
                                    resources=[group_arn(group_name)]),
            ]),
            install_latest_aws_sdk=False,
            log_group=self.sdk_log_group,
            service_timeout=CUSTOM_RESOURCE_TIMEOUT,
        )

    def _root_device(self, image_id: str) -> cr.AwsCustomResource:
        """The AMI's root device name (``/dev/sda1`` on Ubuntu, ``/dev/xvda`` on Amazon Linux), read at deploy time
        (EC2 DescribeImages of the AMI the SSM parameter resolves to), so the gp3 root mapping resizes the AMI's own
        root volume whatever ``ami_ssm_parameter`` names, instead of adding a second, unused volume."""
        call = cr.AwsSdkCall(
            service="EC2",
            action="describeImages",
            parameters={"ImageIds": [image_id]},
            physical_resource_id=cr.PhysicalResourceId.from_response("Images.0.ImageId"),
            output_paths=[ROOT_DEVICE_FIELD],
        )
        return cr.AwsCustomResource(
            self,
            "RootDevice",
            resource_type="Custom::AmiRootDevice",
            on_create=call,
            on_update=call,  # a new AMI behind the parameter: read its root device again
            policy=cr.AwsCustomResourcePolicy.from_statements([
                # DescribeImages has no resource-level permissions (read-only).
                iam.PolicyStatement(sid="ReadTheAmi", actions=["ec2:DescribeImages"], resources=["*"]),
            ]),
            install_latest_aws_sdk=False,
            log_group=self.sdk_log_group,
            service_timeout=CUSTOM_RESOURCE_TIMEOUT,
        )

    def _user_data(
        self,
        *,
        run_env: Mapping[str, str],
        job_args: Sequence[str],
        max_run_minutes: int,
        source_asset: s3_assets.Asset | None,
        region: str,
    ) -> ec2.UserData:
        ud = ec2.UserData.for_linux()
        release = release_command(run_env["ASG_NAME"], region)
        ud.add_commands(
            "set -euo pipefail",
            # Hard stop first, before anything can fail: the OS powers off a little after max_run_hours whatever happens.
            f"shutdown -h +{max_run_minutes + 2} 'vit-embed: max_run_hours reached'",
            # ... and at max_run_hours a transient timer sets the group to 0 (so AWS does not replace the instance),
            # then powers off. The schedule outside the instance does the same at the deadline if all of this fails.
            f"systemd-run --unit=vit-embed-hard-stop --on-active={max_run_minutes}m --timer-property=AccuracySec=1s "
            f"/bin/sh -c {shlex.quote(release + ' || true; systemctl poweroff')}",
            # If bootstrapping fails before the run script takes over: release the group and power off now, rather
            # than idle until the deadline or be replaced by an instance that fails the same way. Once the script has
            # started (its marker file) it decides: after a spot notice it must leave the group alone.
            f"trap 'rc=$?; [ \"$rc\" -eq 0 ] || [ -e {C.SCRIPT_STARTED_MARKER} ] || {{ {release} || true; shutdown -h now; }}' EXIT",
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
        ud.add_s3_download_command(
            bucket=self.rules_asset.bucket,
            bucket_key=self.rules_asset.s3_object_key,
            local_file=C.STATUS_RULES_PATH,
            region=region,
        )
        if source_asset is not None:
            ud.add_s3_download_command(
                bucket=source_asset.bucket,
                bucket_key=source_asset.s3_object_key,
                local_file=C.SOURCE_ZIP_PATH,
                region=region,
            )
        ud.add_execute_file_command(file_path=script, arguments=f"{C.RUN_ENV_FILE} {C.JOB_ARGS_FILE}")
        return ud

    def _grant_asset(self, asset: s3_assets.Asset) -> None:
        """Read exactly this asset object (``asset.grant_read`` would allow the whole bootstrap bucket)."""
        self.role.add_to_policy(
            iam.PolicyStatement(actions=["s3:GetObject"], resources=[asset.bucket.arn_for_objects(asset.s3_object_key)])
        )
