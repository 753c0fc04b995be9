"""Does super-resolving small images before classification beat plain resizing? (CIFAR-10 study)"""

from .config import PROFILES, STUDY_VARIANTS, VARIANTS, TrainConfig, make_config
from .errors import SrlibError

__all__ = ["PROFILES", "STUDY_VARIANTS", "VARIANTS", "TrainConfig", "make_config", "SrlibError"]
__version__ = "0.1.0"
