"""Training: the custom loop (`trainer.Trainer`, any tf.distribute scale), its parts
(`strategy`, `schedules`, `optimizers`, `step`, `checkpoints`, `summaries`, `progress`,
`validation`) and the `gscnn-tf train` command (`cli`). Keras `fit` trains `gscnn_tf.GSCNN`
directly (its `compile()` is the same recipe)."""
