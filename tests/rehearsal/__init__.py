"""A rehearsal of the cloud run: the real ``cdk/scripts/user_data.sh`` end to end on a machine without a GPU, Docker
or AWS (``tests/test_rehearsal.py``, ``tests/test_rehearsal_boot.py``). Only what needs hardware or an AWS host is
stood in for (``bin/``: nvidia-smi, the docker engine, apt-get / dpkg-query with a first boot's lock race,
shutdown/systemctl; ``harness.FakeImds``: the instance metadata service); S3, CloudWatch Logs and Auto Scaling are a
moto server reached by the real clients (the aws CLI, boto3, and the real s3fs, which mounts a public stand-in of the
nuScenes bucket over FUSE)."""
