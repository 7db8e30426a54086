"""Training: the custom loop (`trainer.Trainer`, any tf.distribute scale), its parts
(`strategy`, `schedules`, `optimizers`, `step`, `checkpoints`, `summaries`, `progress`,
`validation`), the Keras fit wrapper (`fit.GSCNNFitModel`) and the `gscnn-tf train` command
(`cli`)."""
