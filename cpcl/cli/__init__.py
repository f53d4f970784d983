"""The entry layer, above `cpcl.engine` and `cpcl.methods` (nothing below imports it):

* `train`: `main`, the command line of `exp_*/train.py` (training, `--dry_run`);
* `evaluate`: `main`, the command line of `exp_*/eval.py`;
* `snapshot`: a snapshot evaluated with its method's network (`evaluate_snapshot`, the stored
  run settings, one checkpoint on one or several devices).

Import the modules themselves (`from cpcl.cli.train import main`): this package imports none
of them, so `import cpcl.cli.evaluate` does not load the training engine's command line.
"""
