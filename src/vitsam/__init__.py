"""vitsam: a Vision Transformer trained from scratch, and text-prompted segmentation.

Nothing heavy is imported here; the halves load what they need when used.
"""

from vitsam.errors import VitsamError

__all__ = ["VitsamError"]
__version__ = "0.1.0"
