"""Who may call ``mainsail up``: the configured access keys, AWS Signature Version 4 verification and
IAM-style policies (``credentials``, ``sigv4``, ``policy``, ``actions``)."""
