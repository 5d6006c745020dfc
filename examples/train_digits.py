"""Train one of the example models on scikit-learn's digits and save its state dict.

    python examples/train_digits.py --model digits_mlp -o digits_mlp.pt
    python examples/train_digits.py --model digits_cnn -o digits_cnn.pt

SGD with momentum 0.9, lr 0.05, batch 32, 30 epochs, seeded: the same command writes the same
weights. The fixed split of ``planner.experiments.data`` (1347 train / 450 test) is used; the
test accuracy is printed.
"""

from __future__ import annotations

import argparse
import io
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> int:
    import torch

    import examples.models as models
    from planner.experiments.data import load_dataset
    from planner.experiments.training import train
    from planner.fileio import atomic_write_bytes

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("digits_mlp", "digits_cnn"), default="digits_mlp")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--output", required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    X, y, Xt, yt = (torch.from_numpy(a) for a in load_dataset("digits"))
    model = getattr(models, args.model)(seed=args.seed)
    train(model, X, y, epochs=args.epochs, lr=0.05, batch_size=32, momentum=0.9,
          generator=torch.Generator().manual_seed(args.seed))
    model.eval()
    with torch.no_grad():
        accuracy = float((model(Xt).argmax(1) == yt).float().mean())
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    atomic_write_bytes(args.output, buffer.getvalue())
    print(f"{args.model}: test accuracy {accuracy:.4f} ({len(yt)} images); state dict written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
