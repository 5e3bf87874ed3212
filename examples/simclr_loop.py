"""SimCLR in a plain PyTorch loop, on MixDiff's pairing: the first view of each image is cut
from the real image, the second from its diffusion twin (`mixdiff generate` made the twins).

    python examples/simclr_loop.py --real data/train --synthetic data/synthetic/v0 --steps 100
"""

import argparse

import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader

import mixdiff

parser = argparse.ArgumentParser()
parser.add_argument("--real", required=True, help="<class>/<image> tree of real images")
parser.add_argument("--synthetic", required=True, help="its twins, mirroring --real")
parser.add_argument("--steps", type=int, default=100)
parser.add_argument("--batch-size", type=int, default=64)
parser.add_argument("--image-size", type=int, default=32)
args = parser.parse_args()

# the project's SimCLR views; mode="real" is plain SimCLR, "extra" adds the twin as a 3rd view
data = mixdiff.PairedImageFolder(args.real, [args.synthetic], mode="mixdiff",
                                 image_size=args.image_size)
loader = DataLoader(data, batch_size=args.batch_size, shuffle=True, drop_last=True)

encoder = torchvision.models.resnet18(weights=None)
encoder.fc = nn.Identity()  # 512-d features
projector = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 128))
model = nn.Sequential(encoder, projector)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

step = 0
while step < args.steps:
    for (real_view, twin_view), _ in loader:
        loss = mixdiff.nt_xent_loss(model(real_view), model(twin_view), temperature=0.1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step += 1
        print(f"step {step}: loss {loss.item():.4f}")
        if step == args.steps:
            break
torch.save(encoder.state_dict(), "simclr_encoder.pt")  # `mixdiff eval knn --model
print("wrote simclr_encoder.pt")  # torchvision/resnet18 --checkpoint simclr_encoder.pt ...`
