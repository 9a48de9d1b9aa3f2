"""CDK app for the cloud run: one GPU instance (an Auto Scaling group of at most one, any AZ, fallback types, created
empty and raised to one instance after, so the deploy never waits for a GPU) embeds nuScenes and publishes the run to
S3, then sets its group to 0 and shuts down; a schedule outside it enforces the deadline. ``-c engine=batch``: N
shards on AWS Batch instead. ``python -m cdk.preflight`` checks an account before the first deploy. It imports only
the standard-library modules of ``job`` (config, values, errors): the deploy installs from requirements-deploy.lock
alone. The layout, and which module may import which: docs/architecture.md ("The CDK app")."""
