"""One input object of a transform job through the job's instances: read (and decompressed) as it
streams, cut into requests, sent round-robin over the instances with up to the job's request slots
in flight, the answers filtered, joined and assembled (``AssembleWith``) and written in input order
to ``<S3OutputPath>/<input name>.out``, which appears only when the whole object is done.
"""

from __future__ import annotations

import collections
import gzip
import io
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from mainsail.backends.base import BlockingClient
from mainsail.jobs.storage import CountingReader, InputObject, JobFailure
from mainsail.jobs.transform.errors import Cancelled
from mainsail.jobs.transform.records import CHUNK, Batch, filter_record, join_record, parse_path, split_output

if TYPE_CHECKING:
    from mainsail.jobs.transform.job import Job


def transform_object(job: Job, obj: InputObject, http: BlockingClient, pool: ThreadPoolExecutor,
                     slots: threading.Semaphore, picker: Iterator[int]) -> None:
    """Transform ``obj``: its requests run in ``pool`` on a slot of ``slots`` each (held until the
    answer is written), on the instance ``picker`` points at."""
    tin, tout = job.record["TransformInput"], job.record["TransformOutput"]
    processing = job.record.get("DataProcessing") or {}
    content_type = tin.get("ContentType")
    in_filter = parse_path(processing["InputFilter"]) if processing.get("InputFilter") else []
    out_filter = parse_path(processing["OutputFilter"]) if processing.get("OutputFilter") else []
    join = processing.get("JoinSource") == "Input"
    line_split = tin.get("SplitType", "None") == "Line"
    per_record = join or bool(out_filter)
    assemble_line = tout.get("AssembleWith") == "Line"
    sink = job.runner.storage.writer(job.output_uri(obj), tout.get("Accept"))

    def payload_of(batch: Batch) -> bytes:
        if batch.payload is not None:
            return batch.payload
        try:
            sent = [filter_record(r, in_filter, content_type) for r in batch.records] if in_filter \
                else batch.records
        except (ValueError, UnicodeDecodeError) as exc:
            raise JobFailure(f"InputFilter failed on {batch.where(obj.uri)}: {exc}") from None
        if not line_split:
            return sent[0]
        return b"\n".join(sent) + b"\n"

    def assemble(batch: Batch, body: bytes) -> bytes:
        if not per_record:
            if assemble_line and body and not body.endswith(b"\n"):
                return body + b"\n"
            return body
        try:
            outputs = split_output(body, len(batch.records))
            pieces = []
            for source, output in zip(batch.records, outputs, strict=True):
                joined = join_record(source, output, content_type) if join else output
                pieces.append(filter_record(joined, out_filter, None) if out_filter else joined)
        except (ValueError, UnicodeDecodeError) as exc:
            raise JobFailure(f"Could not process the output of {batch.where(obj.uri)}: {exc}") from None
        sep = b"\n" if assemble_line else b""
        return sep.join(pieces) + sep

    def call(batch: Batch, payload: bytes) -> bytes:
        instances = job.instances
        if not instances:  # stopped: the job is cancelled
            raise Cancelled()
        instance = instances[next(picker) % len(instances)]
        try:
            return job.invoke(http, instance, payload)
        except JobFailure as exc:
            raise JobFailure(f"{exc} (request for {batch.where(obj.uri)})") from None

    pending: collections.deque[tuple[Batch, Future[bytes]]] = collections.deque()

    def drain_one() -> None:
        batch, future = pending[0]
        body = future.result()
        pending.popleft()
        slots.release()
        sink.write(assemble(batch, body))
        job.add(Records=batch.n_records, Requests=1)

    def take_slot() -> None:
        """A request slot: while none is free, write this file's oldest answer (which frees
        its slot) or, with nothing pending, wait for another file's."""
        while not slots.acquire(blocking=False):
            if pending:
                drain_one()
            else:
                job.check()
                if slots.acquire(timeout=0.1):
                    return

    def abandon() -> None:
        for _, future in pending:
            future.cancel()
            slots.release()
        pending.clear()
        sink.abort()

    raw = job.runner.storage.open_raw(obj)
    stream: Any = io.BufferedReader(CountingReader(raw, lambda n: job.add(BytesRead=n)), CHUNK)
    try:
        if tin.get("CompressionType") == "Gzip":
            stream = gzip.GzipFile(fileobj=stream, mode="rb")
        for batch in job.batches(obj, stream):
            job.check()
            payload = payload_of(batch)
            take_slot()
            try:
                pending.append((batch, pool.submit(call, batch, payload)))
            except BaseException:
                slots.release()
                raise
            del payload
        while pending:
            drain_one()
        job.check()
        sink.commit()
    except (gzip.BadGzipFile, EOFError, OSError) as exc:
        abandon()
        raise JobFailure(f"Could not read {obj.uri}: {exc}") from None
    except BaseException:
        abandon()
        raise
    finally:
        stream.close()

