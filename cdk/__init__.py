"""CDK app for the cloud run: one GPU instance (an Auto Scaling group of at most one, any AZ, fallback types) embeds
nuScenes and publishes the run to S3, then sets its group to 0 and shuts down; a schedule outside it enforces the
deadline. ``python -m cdk.preflight`` checks an account before the first deploy."""
