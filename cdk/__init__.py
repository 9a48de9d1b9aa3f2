"""CDK app for the cloud run: one GPU instance embeds nuScenes and publishes the run to S3, then shuts down."""
