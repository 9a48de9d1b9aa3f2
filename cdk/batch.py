"""Batch (``engine=batch``): the N shards as one AWS Batch array job on GPU instances, then the merge, submitted
when the stack deploys. AWS Batch owns placement (any AZ, any allowed type), scaling from and back to zero, retries
of reclaimed spot shards and the per-attempt timeout; the job owns resuming (``job run --shard`` skips what S3
already holds) and ``_STATUS`` (docs/cloud.md, "Scale out")."""
from __future__ import annotations

import math
from typing import Mapping, Sequence

from aws_cdk import Duration, Size
from aws_cdk import aws_batch as batch
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from constructs import Construct

from . import constants as C
from .config import RunConfig
from .network import Network

ROOT_DEVICE = "/dev/xvda"  # the ECS-optimized Amazon Linux 2023 AMIs


def job_size(instance_types: Sequence[str]) -> tuple[int, int]:
    """``(vCPUs, memory MiB)`` a one-GPU job asks for so that it fits on one GPU of every allowed type."""
    gib = min(m / g for _, m, g in (C.instance_spec(t) for t in instance_types))
    return C.shard_vcpus(instance_types), math.floor(gib * 1024 * C.BATCH_MEMORY_FRACTION)


def max_vcpus(instance_types: Sequence[str], shards: int, cap: int | None = None) -> int:
    """The compute environment's ceiling: every shard on its own GPU of the largest per-GPU share at once, or ``cap``
    when that is lower (``-c max_vcpus``: what the account's G/VT quota leaves, which ``make deploy`` passes from the
    preflight). Batch never asks EC2 for more than this: above the quota its launches would only fail, and the shards
    that do not fit wait in the queue until a shard's instance is released."""
    ceiling = C.batch_vcpu_ceiling(instance_types, shards)
    return ceiling if cap is None else min(ceiling, cap)


def retry_strategies() -> list[batch.RetryStrategy]:
    """Retry what another attempt fixes (the host went away; the job stopped gracefully, exit 75), nothing else.

    Batch takes the first rule that matches. A timed-out attempt is never retried (Batch's rule), even though the
    job answers the timeout's SIGTERM with exit 75.
    """
    return [
        batch.RetryStrategy.of(batch.Action.RETRY, batch.Reason.custom(on_status_reason=C.HOST_TERMINATED_REASON)),
        batch.RetryStrategy.of(batch.Action.RETRY, batch.Reason.custom(on_exit_code=str(C.EXIT_STOPPED))),
        batch.RetryStrategy.of(batch.Action.EXIT, batch.Reason.custom(on_reason="*")),
    ]


def time_limit_actions() -> list[batch.JobStateTimeLimitAction]:
    """Cancel a job that Batch reports blocked in RUNNABLE: without these a queued run waits forever.

    Batch acts on the job at the head of the queue once it has been blocked for ``max_time`` with that reason; the
    job then ends FAILED with "Canceled by JobStateTimeLimit action due to reason: <reason>", which the run records
    (``cdk/batch_notes.py``) and ``job status`` shows. No capacity may come back, so it gets an hour; a job that asks
    more than the compute environment or any instance offers never starts, so it gets Batch's minimum.
    """
    cancel, runnable = batch.JobStateTimeLimitActionsAction.CANCEL, batch.JobStateTimeLimitActionsState.RUNNABLE
    waits = [
        (batch.JobStateTimeLimitActionsReason.INSUFFICIENT_INSTANCE_CAPACITY, C.BATCH_CAPACITY_WAIT_MINUTES),
        (batch.JobStateTimeLimitActionsReason.COMPUTE_ENVIRONMENT_MAX_RESOURCE, C.BATCH_MISCONFIGURATION_WAIT_MINUTES),
        (batch.JobStateTimeLimitActionsReason.JOB_RESOURCE_REQUIREMENT, C.BATCH_MISCONFIGURATION_WAIT_MINUTES),
    ]
    return [batch.JobStateTimeLimitAction(action=cancel, state=runnable, reason=reason, max_time=Duration.minutes(minutes))
            for reason, minutes in waits]


class BatchCompute(Construct):
    """One managed EC2 compute environment of the allowed GPU types (min 0 vCPUs, every subnet given: one per AZ),
    its job queue, and the two job definitions: the shard (one GPU) and the merge (CPU and memory only).

    The merge goes to the same queue: it lands on a GPU instance that has just finished a shard, image pulled,
    instead of waiting minutes for a CPU instance to boot; it needs no GPU, and runs for minutes.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: RunConfig,
        network: Network,
        image: ecs.ContainerImage,
        shard_command: Sequence[str],
        merge_command: Sequence[str],
        environment: Mapping[str, str],
        log_group: logs.ILogGroup,
    ) -> None:
        """``config`` gives the allowed types, the market, N (shards), the root volume, the time limit per attempt, the
        vCPU cap and the run id (the log streams' prefix); the commands and the environment are the stack's."""
        super().__init__(scope, construct_id)
        instance_types, market, shards = config.instance_types, config.market, config.shards
        assert shards is not None
        # Encrypted gp3 root (the image's layers and the model cache live there), IMDSv2 only with hop limit 1:
        # containers (bridge network) cannot reach the instance role; they get their job role from the ECS agent.
        self.launch_template = ec2.LaunchTemplate(
            self,
            "Template",
            require_imdsv2=True,
            http_tokens=ec2.LaunchTemplateHttpTokens.REQUIRED,
            http_endpoint=True,
            http_put_response_hop_limit=1,
            block_devices=[
                ec2.BlockDevice(
                    device_name=ROOT_DEVICE,
                    volume=ec2.BlockDeviceVolume.ebs(
                        config.root_volume_gb, volume_type=ec2.EbsDeviceVolumeType.GP3, encrypted=True, delete_on_termination=True
                    ),
                )
            ],
        )
        spot = market == "spot"
        self.compute_environment = batch.ManagedEc2EcsComputeEnvironment(
            self,
            "Gpus",
            vpc=network.vpc,
            vpc_subnets=network.subnets,
            security_groups=[network.security_group],
            instance_types=[ec2.InstanceType(t) for t in instance_types],
            use_optimal_instance_classes=False,
            # The AL2023 GPU AMI ships NVIDIA driver 580 (the torch wheels' CUDA 13 needs >= 580; AL2's is older).
            images=[batch.EcsMachineImage(image_type=batch.EcsMachineImageType.ECS_AL2023_NVIDIA)],
            launch_template=self.launch_template,
            spot=spot,
            allocation_strategy=batch.AllocationStrategy.SPOT_PRICE_CAPACITY_OPTIMIZED
            if spot
            else batch.AllocationStrategy.BEST_FIT_PROGRESSIVE,
            minv_cpus=0,  # nothing runs, nothing bills: Batch scales to zero once the jobs are done
            maxv_cpus=max_vcpus(instance_types, shards, config.max_vcpus),
        )
        self.queue = batch.JobQueue(
            self,
            "Queue",
            priority=1,
            compute_environments=[batch.OrderedComputeEnvironment(compute_environment=self.compute_environment, order=1)],
            job_state_time_limit_actions=time_limit_actions(),
        )

        self._vcpus, self._memory_mib = job_size(instance_types)
        self._logging = ecs.LogDriver.aws_logs(stream_prefix=config.run_id, log_group=log_group)
        self._image, self._environment = image, dict(environment)
        self._timeout = Duration.minutes(config.max_run_minutes)  # per attempt (per child of the array)
        self.shard_role = self._job_role("ShardRole", "vit-embed shard: read sources, write its shard of the run, weights cache")
        self.merge_role = self._job_role("MergeRole", "vit-embed merge: read the shards, write the merged run")
        self.shard_container, self.shard_job = self._job("Shard", shard_command, self.shard_role, gpu=1)
        self.merge_container, self.merge_job = self._job("Merge", merge_command, self.merge_role, gpu=None)

    def _job(self, name: str, command: Sequence[str], role: iam.Role,
             gpu: int | None) -> tuple[batch.EcsEc2ContainerDefinition, batch.EcsJobDefinition]:
        """A container (the run's image, size, logs and shared memory) and its job definition (retries, timeout)."""
        container = batch.EcsEc2ContainerDefinition(
            self,
            f"{name}Container",
            image=self._image,
            command=list(command),
            environment=dict(self._environment),
            cpu=self._vcpus,
            memory=Size.mebibytes(self._memory_mib),
            gpu=gpu,
            job_role=role,
            logging=self._logging,
            linux_parameters=batch.LinuxParameters(self, f"{name}Linux", shared_memory_size=Size.gibibytes(C.BATCH_SHM_GIB)),
        )
        job = batch.EcsJobDefinition(
            self,
            f"{name}Job",
            container=container,
            retry_attempts=C.BATCH_ATTEMPTS,
            retry_strategies=retry_strategies(),
            timeout=self._timeout,
        )
        return container, job

    def _job_role(self, construct_id: str, description: str) -> iam.Role:
        """A container's own role (the stack grants it exactly what it reads and writes); ECS hands it over."""
        return iam.Role(self, construct_id, assumed_by=iam.ServicePrincipal("ecs-tasks.amazonaws.com"), description=description)

    @property
    def execution_roles(self) -> list[iam.IRole]:
        """The roles the ECS agent pulls the image with (one per container definition)."""
        return [c.execution_role for c in (self.shard_container, self.merge_container)]
