"""The Keras `fit` path: a wrapper that lets `compile`/`fit` train the functional model with
`GSCNNLoss`, on one device or under `MirroredStrategy` (with sync batch norm).

    strategy = tf.distribute.MirroredStrategy()          # or none: one device
    with strategy.scope():
        net = gscnn_tf.build_model(config.model, num_classes)
        model = GSCNNFitModel(net, weight_decay=1e-4)
        model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                      loss=GSCNNLoss(config.loss))
    model.fit(build_dataset(config, "train", True, 16), steps_per_epoch=100, epochs=10,
              validation_data=build_dataset(config, "val", False, 4))
    net.save("gscnn.keras")                              # the functional model

`compute_loss` returns GSCNNLoss's total unchanged: under `tf.distribute` it already is each
replica's share of the global-batch loss, and Keras sums replica gradients, so nothing is
divided by the replica count a second time (a `keras.losses.Loss` would be). Keras reports
`loss` and every term (`seg`, `edge`, `att`, `dual`, `l2`) as global-batch values.

MultiWorkerMirroredStrategy: Keras 3.15's `fit` is broken there upstream; train across
machines with the custom loop (`gscnn-tf train`, `gscnn_tf.training.trainer.Trainer`).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from gscnn_tf.losses import GSCNNLoss
from gscnn_tf.training.optimizers import l2_loss

TERMS = ("seg", "edge", "att", "dual", "l2")


class GSCNNFitModel(keras.Model):
    """Wraps the functional GSCNN model (`net`, returning {"seg_logits", "edge_logits"}) for
    `compile(optimizer, loss=GSCNNLoss(...))` and `fit`. Data elements are the pipeline's
    (image float32 [B, H, W, 3], {"labels", "edges"}).

    weight_decay: L2 coefficient on kernels (`weight_decay / 2 * sum(kernel ** 2)` added to
    the loss, as the custom loop does for SGD); 0 with AdamW. seed: the Gumbel-noise seed of
    the dual loss, combined with the optimizer's iteration count during training.
    """

    def __init__(self, net: keras.Model, weight_decay: float = 0.0, seed: int = 0, **kwargs):
        super().__init__(name=kwargs.pop("name", "gscnn_fit"), **kwargs)
        self.net = net
        self.weight_decay = float(weight_decay)
        self.seed = int(seed)
        self.gscnn_loss = GSCNNLoss()
        self.term_trackers = [keras.metrics.Mean(name=k) for k in TERMS]

    def call(self, images, training=False):
        return self.net(images, training=training)

    def compile(self, optimizer="sgd", loss=None, **kwargs):
        """`loss` must be a `GSCNNLoss` (default: GSCNNLoss() with the default weights)."""
        if loss is not None and not isinstance(loss, GSCNNLoss):
            raise TypeError(f"GSCNNFitModel.compile: loss must be a gscnn_tf.losses.GSCNNLoss, "
                            f"got {type(loss).__name__}")
        self.gscnn_loss = loss or GSCNNLoss()
        super().compile(optimizer=optimizer, **kwargs)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        seed = None
        if training:
            seed = tf.stack([tf.constant(self.seed, tf.int64),
                             tf.cast(self.optimizer.iterations, tf.int64)])
        terms = dict(self.gscnn_loss(y, y_pred, seed=seed))
        context = tf.distribute.get_replica_context()
        replicas = context.num_replicas_in_sync if context is not None else 1
        terms["l2"] = l2_loss(self.trainable_variables, self.weight_decay) / replicas
        for tracker in self.term_trackers:
            tracker.update_state(terms[tracker.name] * replicas)
        return terms["total"] + terms["l2"]

    @property
    def metrics(self):
        return [*super().metrics, *self.term_trackers]
