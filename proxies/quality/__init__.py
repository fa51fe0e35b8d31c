"""Quality proxies. `short_train` trains a width-scaled copy of a genome and reports validation bits per byte:

  config.py       ShortTrainConfig: its settings, their defaults and checks
  short_train.py  ShortTrain, the QualityProxy: the proxy genome, seed averaging, evaluate()
  train_loop.py   one training run: model, optimizer, steps, divergence and time checks, validation
  schedules.py    the LR schedules (warmup + cosine; warmup-stable-decay for multi-fidelity ladders)
  checkpoint.py   rung checkpoints, so a higher rung continues where a lower one stopped
  threads.py      torch's process-wide thread count while proxies run
  corpus.py       the byte-level training data

All but config.py import torch; import the submodules directly."""
