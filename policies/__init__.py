"""Haven's policy tables: data, not code. Read with `governance.policy_tables`."""

from pathlib import Path

POLICIES_DIR = Path(__file__).parent
