"""A trivial flow to deploy in the `tuneloop jobs` tests (imported inside the test, after Prefect's harness
is up: importing prefect at collection time binds its log handlers to a capture stream pytest later closes)."""

from prefect import flow


@flow(name="tl-test-job")
def tl_test_job(n: int = 1) -> int:
    return n
