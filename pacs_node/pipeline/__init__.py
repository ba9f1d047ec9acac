"""The enhancement pipeline: Celery queues on Redis, with the audit DB as the source of truth.

The node publishes a job id only after the job's row is committed; workers claim the row
(compare-and-set with a lease) before any work, so a lost, repeated or late message loses
and duplicates nothing; the reconciler re-publishes whatever is stuck.
"""
