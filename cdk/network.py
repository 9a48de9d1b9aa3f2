"""Network: a VPC with one subnet per AZ, no inbound rule anywhere, HTTPS (and apt's HTTP) out, an S3 gateway
endpoint, no NAT by default."""
from __future__ import annotations

import constructs
from aws_cdk import RemovalPolicy
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_logs as logs
from constructs import Construct

from . import constants as C


class Network(Construct):
    """The instance's VPC, the subnets it may launch in (one per AZ) and its security group.

    Default: a new VPC with one public subnet in each of the stack's AZs, all of them open to the instance's Auto
    Scaling group, so AWS launches the GPU wherever the type is offered and has capacity. The instance gets a public
    IP for outbound traffic through the internet gateway; its security group has no inbound rule, so nothing can
    connect to it, and it is managed through SSM Session Manager. That avoids a NAT gateway (~$45/month plus per-GB
    charges) for a machine that lives an hour. ``nat_gateway=True`` moves it to private subnets behind one NAT gateway
    instead. S3 traffic (the nuScenes archives, the artifacts) goes through a free gateway endpoint either way.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        vpc_id: str | None = None,
        subnet_ids: tuple[str, ...] = (),
        availability_zones: tuple[str, ...] = (),
        max_azs: int = C.DEFAULT_MAX_AZS,
        nat_gateway: bool = False,
    ) -> None:
        super().__init__(scope, construct_id)
        # What makes the instance's subnets reach the internet; None for an existing VPC (its routes exist already).
        self.internet_connectivity: constructs.IDependable | None = None
        if vpc_id:
            if not subnet_ids:
                raise ValueError("subnet_ids are required with vpc_id")
            # from_vpc_attributes (not from_lookup): synth stays offline. The AZ list is a placeholder: the group
            # is placed by subnet id alone (VPCZoneIdentifier).
            self.vpc: ec2.IVpc = ec2.Vpc.from_vpc_attributes(self, "Vpc", vpc_id=vpc_id, availability_zones=["dummy"])
            subnets = [ec2.Subnet.from_subnet_id(self, f"Subnet{i}", s) for i, s in enumerate(subnet_ids)]
            self.subnets = ec2.SubnetSelection(subnets=subnets)
            self.created_vpc = False
        else:
            subnet_config = [ec2.SubnetConfiguration(name="public", subnet_type=ec2.SubnetType.PUBLIC, cidr_mask=24)]
            if nat_gateway:
                subnet_config.append(
                    ec2.SubnetConfiguration(name="private", subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS, cidr_mask=24)
                )
            vpc = ec2.Vpc(
                self,
                "Vpc",
                ip_addresses=ec2.IpAddresses.cidr(C.VPC_CIDR),
                # Pinned: those AZs. Otherwise every AZ the stack lists (see EmbeddingRunStack.availability_zones).
                availability_zones=list(availability_zones) or None,
                max_azs=None if availability_zones else max_azs,
                nat_gateways=1 if nat_gateway else 0,
                subnet_configuration=subnet_config,
                restrict_default_security_group=True,
                gateway_endpoints={"S3": ec2.GatewayVpcEndpointOptions(service=ec2.GatewayVpcEndpointAwsService.S3)},
            )
            flow_log_group = logs.LogGroup(
                self,
                "FlowLogs",
                retention=logs.RetentionDays.ONE_MONTH,
                removal_policy=RemovalPolicy.DESTROY,
            )
            vpc.add_flow_log(
                "FlowLog",
                destination=ec2.FlowLogDestination.to_cloud_watch_logs(flow_log_group),
                traffic_type=ec2.FlowLogTrafficType.REJECT,
                max_aggregation_interval=ec2.FlowLogMaxAggregationInterval.TEN_MINUTES,
            )
            self.vpc = vpc
            subnet_type = ec2.SubnetType.PRIVATE_WITH_EGRESS if nat_gateway else ec2.SubnetType.PUBLIC
            # Every subnet of that type, one per AZ: the group may launch in any of them.
            self.subnets = ec2.SubnetSelection(subnet_type=subnet_type)
            # What makes those subnets reach the internet (the IGW attachment and routes, or the NAT gateway's
            # routes): whatever launches into them must be created after it, or its first boot has no network.
            self.internet_connectivity = vpc.select_subnets(
                subnet_type=subnet_type).internet_connectivity_established
            self.created_vpc = True
        self.public_ip = not nat_gateway and not vpc_id

        self.security_group = ec2.SecurityGroup(
            self,
            "InstanceSg",
            vpc=self.vpc,
            description="vit-embed job instance: no inbound rules (SSM only); HTTPS and apt HTTP out",
            allow_all_outbound=False,
        )
        for port, why in C.EGRESS_PORTS:
            self.security_group.add_egress_rule(ec2.Peer.any_ipv4(), ec2.Port.tcp(port), why)
