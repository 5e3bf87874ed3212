"""MixDiff's evaluation of anyone's encoder, from Python: a timm network with weights from disk,
scored by the weighted kNN, the linear probe and the corruptions suite; the results land in
--out as a run's do, so `mixdiff report RUN... OUT` shows the model beside our runs.

    python examples/evaluate_timm.py --model timm/resnet18 --checkpoint weights.pth \
        --train data/fashion-mnist/train --test data/fashion-mnist/test --out results/resnet18
"""

import argparse

import mixdiff

parser = argparse.ArgumentParser()
parser.add_argument("--model", default="timm/resnet18", help="timm/NAME or torchvision/NAME")
parser.add_argument("--checkpoint", help="its weights (default: the library's, from the hub)")
parser.add_argument("--train", required=True, help="<class>/<image> tree the probe is fitted on")
parser.add_argument("--test", required=True, help="the tree scored, with the same classes")
parser.add_argument("--out", required=True, help="where the results go")
parser.add_argument("--image-size", type=int, help="evaluate at this size (default: the model's)")
args = parser.parse_args()

encoder = mixdiff.Encoder.from_model(args.model, args.out, args.checkpoint,
                                     image_size=args.image_size, device="cpu")
train, test = mixdiff.labelled_sets(args.train, args.test)
suite = mixdiff.SUITES["corruptions"]
for written in (mixdiff.knn_eval(encoder, train, test),
                mixdiff.linear_eval(encoder, train, test),  # the probe robustness_eval scores
                mixdiff.robustness_eval(encoder, suite, suite.scan(args.test),
                                        corruptions=("gaussian_noise", "contrast"),
                                        severities=(3,))[0]):
    print("wrote", written)
