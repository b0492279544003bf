from .unet import UNet3DConditionModel

__all__ = ["UNet3DConditionModel"]
