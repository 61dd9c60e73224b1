"""Where this process stands in a distributed run, and how a batch is split over workers and replicas.

The chief (`is_chief`) writes the run-level files; `workers` gives the number of
workers, this worker's index and its local replicas; a global batch is cut to this
worker's rows (`worker_rows`) and those to its replicas (`split_for_replicas`).
"""

import tensorflow as tf


def cluster_task(strategy):
    """(task type, task id) of this process in a multi-worker cluster, else (None, 0)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return None, 0
    return resolver.task_type, resolver.task_id or 0


def is_chief(strategy):
    """True unless this is a non-chief worker of a multi-worker strategy."""
    task_type, task_id = cluster_task(strategy)
    return task_type in (None, "chief") or (task_type == "worker" and task_id == 0)


def workers(strategy):
    """(number of workers, this worker's index, replicas on this worker)."""
    if strategy.num_replicas_in_sync == 1:
        return 1, 0, 1
    local = len(strategy.extended.worker_devices)
    count = strategy.num_replicas_in_sync // local
    return count, (cluster_task(strategy)[1] if count > 1 else 0), local


def split_for_replicas(strategy, batch, global_batch_size):
    """Hands each local replica its slice of this worker's batch.

    The batches come from a plain `tf.data` iterator (which, unlike a
    distributed iterator, can be checkpointed) and are split here.
    """
    if strategy.num_replicas_in_sync == 1:
        return batch
    _, _, local = workers(strategy)
    per_replica = global_batch_size // strategy.num_replicas_in_sync

    def slice_for(context):
        i = context.replica_id_in_sync_group % local
        return tf.nest.map_structure(lambda t: t[i * per_replica : (i + 1) * per_replica], batch)

    return strategy.experimental_distribute_values_from_function(slice_for)


def worker_rows(strategy, batch, global_batch_size):
    """This worker's rows of a global batch: the `i`-th of `n` equal slices on worker `i` of `n`.

    Every worker of a multi-worker run reads the same global batches (one input
    position, which a single-worker checkpoint can hold); each trains on its own
    rows, which `split_for_replicas` then hands to its local replicas.

    Args:
        strategy: The run's `tf.distribute.Strategy`.
        batch: A (nested) structure of tensors whose first dimension is `global_batch_size`.
        global_batch_size: Examples per step over all workers.

    Returns:
        `batch` as is with one worker; else the same structure with each tensor cut to
        rows `[index * rows, (index + 1) * rows)`, `rows = global_batch_size // workers`.
    """
    count, index, _ = workers(strategy)
    if count == 1:
        return batch
    rows = global_batch_size // count
    start = index * rows
    return tf.nest.map_structure(lambda t: t[start : start + rows], batch)
