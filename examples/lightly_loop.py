"""The MixDiff pairing with lightly's SimCLR transform and loss: lightly's multi-view transform
gives one view per slot, the first cut from the real image, the second from its twin.

    python examples/lightly_loop.py --real data/train --synthetic data/synthetic/v0 --steps 100
"""

import argparse

import torch
import torchvision
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead
from lightly.transforms import SimCLRTransform
from torch import nn
from torch.utils.data import DataLoader

import mixdiff

parser = argparse.ArgumentParser()
parser.add_argument("--real", required=True)
parser.add_argument("--synthetic", required=True)
parser.add_argument("--steps", type=int, default=100)
parser.add_argument("--batch-size", type=int, default=64)
parser.add_argument("--image-size", type=int, default=32)
args = parser.parse_args()

transform = SimCLRTransform(input_size=args.image_size, gaussian_blur=0.0)
data = mixdiff.PairedImageFolder(args.real, [args.synthetic], mode="mixdiff",
                                 transform=transform)
loader = DataLoader(data, batch_size=args.batch_size, shuffle=True, drop_last=True)

resnet = torchvision.models.resnet18(weights=None)
backbone = nn.Sequential(*list(resnet.children())[:-1])  # lightly's way: 512 x 1 x 1
model = nn.Sequential(backbone, nn.Flatten(), SimCLRProjectionHead(512, 512, 128))
criterion = NTXentLoss(temperature=0.1)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

step = 0
while step < args.steps:
    for (real_view, twin_view), _ in loader:
        loss = criterion(model(real_view), model(twin_view))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step += 1
        print(f"step {step}: loss {loss.item():.4f}")
        if step == args.steps:
            break
torch.save({"state_dict": {f"backbone.{k}": v for k, v in backbone.state_dict().items()}},
           "lightly_encoder.ckpt")  # mixdiff's --model torchvision/resnet18 reads it
print("wrote lightly_encoder.ckpt")
