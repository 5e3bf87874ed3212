"""One LightningModule per SSL method, over a shared base (`base.SSLMethod`)."""

from mixdiff.pretrain.methods.barlow_twins import BarlowTwins
from mixdiff.pretrain.methods.base import OPTIMIZERS, SSLMethod
from mixdiff.pretrain.methods.dino import DINO
from mixdiff.pretrain.methods.simclr import SimCLR

METHODS: dict[str, type[SSLMethod]] = {"simclr": SimCLR, "barlow_twins": BarlowTwins, "dino": DINO}

__all__ = ["METHODS", "OPTIMIZERS", "SSLMethod", "SimCLR", "BarlowTwins", "DINO"]
