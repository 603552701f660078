"""Convert published LPIPS (VGG) weights into the one file `lpips` reads:
torchvision's `vgg16-397923af.pth` (keys `features.N.weight|bias`, plus a `classifier.*` that LPIPS does not use)
and the lpips package's `vgg.pth` (keys `linL.model.1.weight`, L = 0..4) → `features.N.*` and `weights.L.weight`.
"""

from __future__ import annotations

import argparse

import torch

from .vgg import TAP_CHANNELS, lpips_module


def convert(vgg_state: dict[str, torch.Tensor], lin_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict from torchvision's VGG16 and lpips' lin state dicts (tensors are not copied); ValueError
    when a key our module needs is absent."""
    state = {key: value for key, value in vgg_state.items() if key.startswith("features.")}
    for layer in range(len(TAP_CHANNELS)):
        key = f"lin{layer}.model.1.weight"
        if key not in lin_state:
            raise ValueError(f"the lin state dict has no {key!r} (expected lpips' vgg.pth)")
        state[f"weights.{layer}.weight"] = lin_state[key]
    missing = sorted(set(lpips_module().state_dict()) - set(state))
    if missing:
        raise ValueError(f"the VGG state dict lacks {missing[:5]} (expected torchvision's vgg16-397923af.pth)")
    return state


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m autoencoder.perceptual", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    convert_command = commands.add_parser("convert", help="write the LPIPS (VGG) weights file that lpips() reads")
    convert_command.add_argument("--vgg", required=True, help="torchvision's vgg16-397923af.pth")
    convert_command.add_argument("--lin", required=True, help="the lpips package's weights/v0.1/vgg.pth")
    convert_command.add_argument("--out", required=True, help="the file to write, e.g. lpips_vgg.pt")
    args = parser.parse_args(argv)
    vgg_state = torch.load(args.vgg, map_location="cpu", weights_only=True)
    lin_state = torch.load(args.lin, map_location="cpu", weights_only=True)
    torch.save(convert(vgg_state, lin_state), args.out)
    print(f"wrote {args.out}")
