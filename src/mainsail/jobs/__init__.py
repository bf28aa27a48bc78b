"""Work that outlives a request: asynchronous inference (a durable queue) and batch transform jobs, and the
storage both read and write (own S3, real S3, file://)."""
