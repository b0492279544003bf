"""Down, mid and up blocks of the video UNet (diffusers' UNet2D blocks, inflated)."""
from mindspore import nn, ops

from .attention import Transformer3DModel
from .resnet import Downsample3D, ResnetBlock3D, Upsample3D


def _block_kind(block_type, kinds):
    """'CrossAttnDownBlock2D' and 'CrossAttnDownBlock3D' name the same block."""
    kind = block_type[:-2] if block_type.endswith(("2D", "3D")) else block_type
    if kind not in kinds:
        names = ", ".join(k + "3D" for k in kinds)
        raise ValueError(f"unsupported block type {block_type!r}; this UNet has {names} (2D or 3D names)")
    return kind


def get_down_block(down_block_type, **kwargs):
    kind = _block_kind(down_block_type, ("DownBlock", "CrossAttnDownBlock"))
    if kind == "DownBlock":
        return DownBlock3D(**_resnet_args(kwargs))
    return CrossAttnDownBlock3D(**kwargs)


def get_up_block(up_block_type, **kwargs):
    kind = _block_kind(up_block_type, ("UpBlock", "CrossAttnUpBlock"))
    if kind == "UpBlock":
        return UpBlock3D(**_resnet_args(kwargs))
    return CrossAttnUpBlock3D(**kwargs)


_ATTENTION_ARGS = ("num_attention_heads", "cross_attention_dim", "use_linear_projection",
                   "only_cross_attention", "upcast_attention")


def _resnet_args(kwargs):
    return {k: v for k, v in kwargs.items() if k not in _ATTENTION_ARGS}


def _resnets(in_channels, out_channels, num_layers, temb_channels, resnet_eps, resnet_groups, dropout,
             resnet_time_scale_shift, output_scale_factor=1.0, skip_channels=None, prev_output_channel=None):
    """The resnets of a block; in an up block each also takes a skip connection."""
    resnets = []
    for i in range(num_layers):
        if skip_channels is None:
            in_ch = in_channels if i == 0 else out_channels
        else:
            in_ch = (prev_output_channel if i == 0 else out_channels) + skip_channels[i]
        resnets.append(ResnetBlock3D(in_ch, out_channels, temb_channels, groups=resnet_groups, eps=resnet_eps,
                                     dropout=dropout, time_embedding_norm=resnet_time_scale_shift,
                                     output_scale_factor=output_scale_factor))
    return nn.CellList(resnets)


def _transformers(channels, num_layers, num_attention_heads, cross_attention_dim, resnet_groups,
                  use_linear_projection, only_cross_attention, upcast_attention):
    return nn.CellList([
        Transformer3DModel(num_attention_heads, channels // num_attention_heads, in_channels=channels,
                           norm_num_groups=resnet_groups, cross_attention_dim=cross_attention_dim,
                           use_linear_projection=use_linear_projection,
                           only_cross_attention=only_cross_attention, upcast_attention=upcast_attention)
        for _ in range(num_layers)])


class DownBlock3D(nn.Cell):
    def __init__(self, num_layers, in_channels, out_channels, temb_channels, add_downsample=True,
                 resnet_eps=1e-6, resnet_groups=32, dropout=0.0, resnet_time_scale_shift="default",
                 downsample_padding=1):
        super().__init__()
        self.resnets = _resnets(in_channels, out_channels, num_layers, temb_channels, resnet_eps,
                                resnet_groups, dropout, resnet_time_scale_shift)
        self.downsamplers = None
        if add_downsample:
            self.downsamplers = nn.CellList([Downsample3D(out_channels, padding=downsample_padding)])

    def construct(self, hidden_states, temb, encoder_hidden_states=None):
        output_states = ()
        for resnet in self.resnets:
            hidden_states = resnet(hidden_states, temb)
            output_states += (hidden_states,)
        if self.downsamplers is not None:
            hidden_states = self.downsamplers[0](hidden_states)
            output_states += (hidden_states,)
        return hidden_states, output_states


class CrossAttnDownBlock3D(nn.Cell):
    def __init__(self, num_layers, in_channels, out_channels, temb_channels, add_downsample=True,
                 resnet_eps=1e-6, resnet_groups=32, dropout=0.0, resnet_time_scale_shift="default",
                 downsample_padding=1, num_attention_heads=1, cross_attention_dim=1280,
                 use_linear_projection=False, only_cross_attention=False, upcast_attention=False):
        super().__init__()
        self.resnets = _resnets(in_channels, out_channels, num_layers, temb_channels, resnet_eps,
                                resnet_groups, dropout, resnet_time_scale_shift)
        self.attentions = _transformers(out_channels, num_layers, num_attention_heads, cross_attention_dim,
                                        resnet_groups, use_linear_projection, only_cross_attention,
                                        upcast_attention)
        self.downsamplers = None
        if add_downsample:
            self.downsamplers = nn.CellList([Downsample3D(out_channels, padding=downsample_padding)])

    def construct(self, hidden_states, temb, encoder_hidden_states=None):
        output_states = ()
        for resnet, attn in zip(self.resnets, self.attentions):
            hidden_states = attn(resnet(hidden_states, temb), encoder_hidden_states)
            output_states += (hidden_states,)
        if self.downsamplers is not None:
            hidden_states = self.downsamplers[0](hidden_states)
            output_states += (hidden_states,)
        return hidden_states, output_states


class UNetMidBlock3DCrossAttn(nn.Cell):
    def __init__(self, in_channels, temb_channels, resnet_eps=1e-6, resnet_groups=32, dropout=0.0,
                 resnet_time_scale_shift="default", output_scale_factor=1.0, num_attention_heads=1,
                 cross_attention_dim=1280, use_linear_projection=False, upcast_attention=False):
        super().__init__()
        resnet_groups = resnet_groups if resnet_groups is not None else min(in_channels // 4, 32)
        self.resnets = _resnets(in_channels, in_channels, 2, temb_channels, resnet_eps, resnet_groups,
                                dropout, resnet_time_scale_shift, output_scale_factor)
        self.attentions = _transformers(in_channels, 1, num_attention_heads, cross_attention_dim,
                                        resnet_groups, use_linear_projection, False, upcast_attention)

    def construct(self, hidden_states, temb, encoder_hidden_states):
        hidden_states = self.resnets[0](hidden_states, temb)
        hidden_states = self.attentions[0](hidden_states, encoder_hidden_states)
        return self.resnets[1](hidden_states, temb)


class UpBlock3D(nn.Cell):
    def __init__(self, num_layers, in_channels, prev_output_channel, out_channels, temb_channels,
                 add_upsample=True, resnet_eps=1e-6, resnet_groups=32, dropout=0.0,
                 resnet_time_scale_shift="default"):
        super().__init__()
        skips = [out_channels] * (num_layers - 1) + [in_channels]
        self.resnets = _resnets(None, out_channels, num_layers, temb_channels, resnet_eps, resnet_groups,
                                dropout, resnet_time_scale_shift, skip_channels=skips,
                                prev_output_channel=prev_output_channel)
        self.upsamplers = None
        if add_upsample:
            self.upsamplers = nn.CellList([Upsample3D(out_channels)])

    def construct(self, hidden_states, res_hidden_states_tuple, temb, encoder_hidden_states=None,
                  upsample_size=None):
        for resnet in self.resnets:
            res_hidden_states = res_hidden_states_tuple[-1]
            res_hidden_states_tuple = res_hidden_states_tuple[:-1]
            hidden_states = resnet(ops.concat((hidden_states, res_hidden_states), 1), temb)
        if self.upsamplers is not None:
            hidden_states = self.upsamplers[0](hidden_states, upsample_size)
        return hidden_states


class CrossAttnUpBlock3D(nn.Cell):
    def __init__(self, num_layers, in_channels, prev_output_channel, out_channels, temb_channels,
                 add_upsample=True, resnet_eps=1e-6, resnet_groups=32, dropout=0.0,
                 resnet_time_scale_shift="default", num_attention_heads=1, cross_attention_dim=1280,
                 use_linear_projection=False, only_cross_attention=False, upcast_attention=False):
        super().__init__()
        skips = [out_channels] * (num_layers - 1) + [in_channels]
        self.resnets = _resnets(None, out_channels, num_layers, temb_channels, resnet_eps, resnet_groups,
                                dropout, resnet_time_scale_shift, skip_channels=skips,
                                prev_output_channel=prev_output_channel)
        self.attentions = _transformers(out_channels, num_layers, num_attention_heads, cross_attention_dim,
                                        resnet_groups, use_linear_projection, only_cross_attention,
                                        upcast_attention)
        self.upsamplers = None
        if add_upsample:
            self.upsamplers = nn.CellList([Upsample3D(out_channels)])

    def construct(self, hidden_states, res_hidden_states_tuple, temb, encoder_hidden_states=None,
                  upsample_size=None):
        for resnet, attn in zip(self.resnets, self.attentions):
            res_hidden_states = res_hidden_states_tuple[-1]
            res_hidden_states_tuple = res_hidden_states_tuple[:-1]
            hidden_states = resnet(ops.concat((hidden_states, res_hidden_states), 1), temb)
            hidden_states = attn(hidden_states, encoder_hidden_states)
        if self.upsamplers is not None:
            hidden_states = self.upsamplers[0](hidden_states, upsample_size)
        return hidden_states
