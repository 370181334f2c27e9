"""Basic job creation, serialization and typed arguments (no storage needed)."""

from __future__ import annotations

from dataclasses import dataclass

from qml import Job, JobState, TypedWorker, ValidationError, WorkerContext, WorkerResult
from qml.serialization import dumps, loads


@dataclass
class EmailArgs:
    to: str
    subject: str


class EmailWorker(TypedWorker[EmailArgs]):
    method_name = "send_email"

    async def execute(self, args: EmailArgs, ctx: WorkerContext) -> WorkerResult:
        return WorkerResult.success({"sent_to": args.to})


def main() -> None:
    job = Job(
        "send_email",
        {"to": "user@example.com", "subject": "hi"},
        queue="emails",
        priority=5,
        max_retries=3,
    )
    print(f"job {job.id}: {job.method} on {job.queue}, state {job.state.label}")
    assert job.state is JobState.ENQUEUED

    encoded = dumps(job.args)
    print(f"arguments as JSON: {encoded.decode()}")
    assert loads(encoded) == job.args

    worker = EmailWorker()
    typed = worker.job(EmailArgs(to="ada@example.com", subject="welcome"))
    print(f"typed job arguments: {typed.args}")

    try:
        worker.job({"to": "ada@example.com"})  # type: ignore[arg-type]
    except ValidationError as exc:
        print(f"refused at the caller: {exc}")
    else:
        raise AssertionError("missing subject must be refused")


if __name__ == "__main__":
    main()
