"""Training: ``Trainer`` and the parts it is made of.

* ``trainer``: the loop over steps and epochs, evaluation, saving and loading;
* ``step``: one training step (forward, per-task losses, the weighting, the optimizer);
* ``state``: the typed, versioned ``TrainerState`` a checkpoint stores;
* ``checkpoint``: the checksummed, atomic checkpoint file and the checks that it fits;
* ``options``: the trainer's options, checked upfront;
* ``distributed``: training on several processes (torchrun, DDP), step for step that of
  one process.
"""

from mtlzoo.train.checkpoint import read_checkpoint, write_checkpoint
from mtlzoo.train.options import OPTIMIZERS, Options
from mtlzoo.train.state import TrainerState
from mtlzoo.train.trainer import Trainer

__all__ = ["OPTIMIZERS", "Options", "Trainer", "TrainerState", "read_checkpoint",
           "write_checkpoint"]
