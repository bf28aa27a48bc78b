"""Emulated AWS services on the control port (CloudWatch Logs, S3, STS) and what they share: errors,
identity (account, region, ARNs) and the JSON 1.1 protocol. No SageMaker logic lives here."""
