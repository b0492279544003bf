"""A tiny Stable Diffusion with the real topology (four levels, two layers per
block, every parameter name the real one) and 32-64 channels: the demo's
embedded default and the tests' model."""

UNET_CONFIG = dict(
    sample_size=8, in_channels=4, out_channels=4, block_out_channels=[32, 32, 64, 64], layers_per_block=2,
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    mid_block_type="UNetMidBlock2DCrossAttn", cross_attention_dim=32, attention_head_dim=4, norm_num_groups=32,
)
