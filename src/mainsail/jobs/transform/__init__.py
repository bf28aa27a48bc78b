"""Batch transform: ``CreateTransformJob`` & co. (:mod:`.api`), and the ``TransformRunner``
(:mod:`.runner`) that runs the jobs.

A job is a record of kind ``transform-job`` in the state store. ``CreateTransformJob`` validates
the request and stores it ``InProgress``; the runner (a thread of ``mainsail up``) picks it up
(:mod:`.job`):

1. starts ``TransformResources.InstanceCount`` instances of the model through the ``Backend`` (the
   model's container environment, the job's ``Environment`` and the batch variables SageMaker sets:
   ``SAGEMAKER_BATCH``, ``SAGEMAKER_MAX_PAYLOAD_IN_MB``, ``SAGEMAKER_MAX_CONCURRENT_TRANSFORMS``,
   ``SAGEMAKER_BATCH_STRATEGY``), each running the workers the instance type's container would
   (:func:`mainsail.hosting.instance_types.model_server_workers`, as an endpoint's), and waits for
   ``/ping``;
2. streams every input object (``s3://`` from mainsail's own S3 store, or from real S3 with boto3
   when ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` is set, as :mod:`mainsail.backends.model_fetch`
   does; or a local ``file://`` file or folder: :mod:`mainsail.jobs.storage`) record by record
   (:mod:`.records`, :mod:`.objects`): ``SplitType`` Line splits on newlines, None sends the
   whole object; Gzip input is decompressed as it streams; ``BatchStrategy`` MultiRecord packs
   records into requests of at most ``MaxPayloadInMB`` (default 6), SingleRecord sends one each;
   ``MaxConcurrentTransforms`` (default 1) requests per instance are in flight at once, spread
   round-robin over the instances and over as many input objects as there are such slots (each
   object streamed, its answers written in order; a slot is held until its answer is written, so
   memory stays bounded by the slots);
3. applies ``DataProcessing`` (``InputFilter``, ``JoinSource`` Input, ``OutputFilter``: a JSONPath
   subset, see :func:`.records.parse_path`) and writes ``<S3OutputPath>/<input name>.out`` streaming
   (a temp file committed to the own store, or an S3 multipart upload), in input order;
4. stops the instances, always, and records ``Completed``, ``Failed`` (with a FailureReason naming
   the file and line of the request that failed, after ``InvocationsMaxRetries`` retries) or
   ``Stopped`` (``StopTransformJob``: InProgress -> Stopping -> Stopped).

Progress (records and bytes) is kept in the record; ``DescribeTransformJob`` returns it under an
extra ``MainsailProgress`` key that botocore does not parse (the ``mainsail transform`` command
reads it over plain HTTP). A job interrupted by ``mainsail up`` stopping (or dying) stays
``InProgress``, and the next ``mainsail up`` resumes it: the instances it recorded are stopped, new
ones started, and only the inputs whose ``.out`` is not complete are transformed again. Outputs are
written atomically (a temp file renamed or committed, a multipart upload completed), so an output
that exists is complete; one written before the job first started (an earlier job's) is redone.
"""

from __future__ import annotations
