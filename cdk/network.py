"""Network: a VPC with no inbound rule anywhere, HTTPS (and apt's HTTP) out, an S3 gateway endpoint, no NAT by default."""
from __future__ import annotations

from aws_cdk import RemovalPolicy
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_logs as logs
from constructs import Construct

from . import constants as C


IMPORTED_SUBNET_AZ = "implied-by-subnet"


class Network(Construct):
    """The instance's VPC, subnet choice and security group.

    Default: a new VPC with public subnets only. The instance gets a public IP for outbound traffic through the
    internet gateway; its security group has no inbound rule, so nothing can connect to it, and it is managed through
    SSM Session Manager. That avoids a NAT gateway (~$45/month plus per-GB charges) for a machine that lives an hour.
    ``nat_gateway=True`` moves it to a private subnet behind one NAT gateway instead. S3 traffic (the nuScenes
    archives, the artifacts) goes through a free gateway endpoint either way.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        vpc_id: str | None = None,
        subnet_id: str | None = None,
        availability_zone: str | None = None,
        nat_gateway: bool = False,
    ) -> None:
        super().__init__(scope, construct_id)
        if vpc_id:
            if not subnet_id:
                raise ValueError("subnet_id is required with vpc_id")
            # from_vpc_attributes (not from_lookup): synth stays offline.
            self.vpc: ec2.IVpc = ec2.Vpc.from_vpc_attributes(self, "Vpc", vpc_id=vpc_id, availability_zones=["dummy"])
            # The AZ is implied by the subnet; the placeholder is removed from the instance (see JobInstance).
            subnet = ec2.Subnet.from_subnet_attributes(self, "Subnet", subnet_id=subnet_id, availability_zone=IMPORTED_SUBNET_AZ)
            self.subnets = ec2.SubnetSelection(subnets=[subnet])
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
                availability_zones=[availability_zone] if availability_zone else None,
                max_azs=None if availability_zone else C.MAX_AZS,
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
            # One subnet: the instance lands in the first AZ (or the pinned one).
            self.subnets = ec2.SubnetSelection(subnets=[vpc.select_subnets(subnet_type=subnet_type).subnets[0]])
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
