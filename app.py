#!/usr/bin/env python3
"""CDK entry point: builds the app and its one stack from cdk.json context (see docs/cloud.md)."""
import sys

from cdk.config import ConfigError
from cdk.factory import create_app


def main() -> None:
    try:
        app, _ = create_app()
    except ConfigError as e:
        sys.exit(f"cdk context error: {e}")
    app.synth()


if __name__ == "__main__":
    main()
