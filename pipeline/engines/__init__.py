"""Execution engines: where the stages run (`Settings.engine`, issue 16).

`embedded` is this process (the rest of pipeline/); `spark` runs the same stage functions over
Spark partitions (`spark_session`, `spark_score`, `spark_land`). Governance (receipts, vault,
audit, opt-outs) stays in the embedded or PostgreSQL database, used from the driver only.
"""
