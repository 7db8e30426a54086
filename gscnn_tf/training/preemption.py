"""Preemption: a SIGTERM (what Kubernetes, cloud training services and preemptible VMs send
before they stop a node) makes training save a checkpoint at the step it has reached, on
every worker, and end with `PREEMPTED_EXIT_CODE`; the same command with `--resume` continues
from that checkpoint.

TensorFlow's `tf.distribute.experimental.PreemptionCheckpointHandler` does the work: it
installs the SIGTERM handler, and under MultiWorkerMirroredStrategy it tells every worker
(through the coordination service) at which step to save, so that all of them take part in
the same collective save whichever worker got the signal. One device and MirroredStrategy
use its local mode (no cluster, the signal is this process's own). The signal is acted on
at the next training step: one more step is trained, then the checkpoint is written.
A signal that arrives during validation or a periodic save is acted on after it.

To know its platform, TensorFlow's handler asks the Google Cloud metadata server once per
`Trainer.train` (an HTTP request that fails at once without a network, 8 ms here; at most
5 s). On a Google Cloud VM the handler also polls that server for maintenance events (GPU
VMs); on GCP CPU-only VMs TensorFlow disables it (it logs that it does not support them),
and there a SIGTERM stops training as it would without it.
"""

from __future__ import annotations

import signal

import tensorflow as tf

from gscnn_tf import files

# 128 + SIGTERM (15): the code a process killed by SIGTERM reports, and the code TensorFlow's
# own handler uses on Google Cloud to ask for a restart. Kubernetes restarts a pod that ends
# with it under `restartPolicy: OnFailure`.
PREEMPTED_EXIT_CODE = 143


class Preempted(Exception):
    """Training stopped after a preemption signal, with a checkpoint at `step` (`path`)."""

    def __init__(self, step: int, path: str | None):
        self.step, self.path = step, path
        super().__init__(f"training preempted: checkpoint at step {step} written"
                         f"{f' ({path})' if path else ''}; the same command with --resume "
                         "continues from it")


class PreemptionWatch:
    """A `PreemptionCheckpointHandler` for one `Trainer.train` call.

        watch = PreemptionWatch(strategy, save_fn, run_dir)   # SIGTERM is watched from here
        values = watch.run(train_step, images, targets)       # raises Preempted after saving
        watch.close()                                         # the previous handler is back

    `save_fn()` saves the run's checkpoint at the current step (on every worker) and returns
    its path. The handler restores from its checkpoint manager when it is built; the run has
    already restored itself (skipping damaged checkpoints, see `RunCheckpoints`), so the
    handler gets a manager over a folder that is never written and saves through `save_fn`.
    """

    def __init__(self, strategy: tf.distribute.Strategy, save_fn, run_dir: str):
        self._previous = signal.getsignal(signal.SIGTERM)
        self._saved: list = []

        def save():
            self._saved.append(save_fn())

        def stop():
            raise Preempted(*(self._saved[-1] if self._saved else (None, None)))

        resolver = getattr(strategy, "cluster_resolver", None)
        manager = tf.train.CheckpointManager(
            tf.train.Checkpoint(), files.join(run_dir, "checkpoints", ".preemption-unused"),
            max_to_keep=1)
        config = tf.distribute.experimental.TerminationConfig(exit_fn=stop, grace_period=0,
                                                              save_fn=save)
        self.handler = tf.distribute.experimental.PreemptionCheckpointHandler(
            resolver, manager, termination_config=config)

    def run(self, train_step, *args):
        """`train_step(*args)`; first, when a worker got SIGTERM, saves and raises Preempted."""
        return self.handler.run(train_step, *args)

    def close(self) -> None:
        """Stops the handler's watcher threads and puts the previous SIGTERM handler back."""
        handler, self.handler = self.handler, None
        if handler is not None:
            handler.__del__()
        signal.signal(signal.SIGTERM, self._previous)
