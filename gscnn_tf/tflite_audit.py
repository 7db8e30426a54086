"""Moved to gscnn_tf.export.gpu_audit; kept until benchmarks/ moves."""

from gscnn_tf.export.gpu_audit import AuditReport, OpAudit, audit, audit_file  # noqa: F401
