"""How far apart the gradient and undecayed criteria are: the share of kept weights their masks
have in common, and with magnitude, on a dense digits MLP (seed 0) trained with weight decay
5e-4 and 5e-3, at densities 0.1 and 0.02 per layer. Run: python examples/criteria_overlap.py"""
import torch
from planner.experiments.data import load_dataset
from planner.experiments.training import make_mlp, train
from planner.pruning.saliency import saliency_scores
from planner.pruning.masks import top_k_mask

X, y, _, _ = load_dataset("digits")
X, y = torch.as_tensor(X, dtype=torch.float32), torch.as_tensor(y)
torch.set_num_threads(1)
for wd in (5e-4, 5e-3):
    m = make_mlp((64, 100, 100, 10), 0)
    train(m, X, y, epochs=64, lr=0.1, batch_size=128, weight_decay=wd, generator=torch.Generator().manual_seed(0))
    w = {"fc1": m.fc1.weight, "fc2": m.fc2.weight}
    g = saliency_scores("gradient", w, X, y, m)
    u = saliency_scores("undecayed", w, X, y, m, wd)
    for d in (0.1, 0.02):
        line = []
        for n in w:
            k = round(d * w[n].numel())
            a, b = top_k_mask(g[n], k), top_k_mask(u[n], k)
            mag = top_k_mask(w[n], k, absolute=True)
            line.append(f"{n}: undecayed&gradient {int((a & b).sum()) / k:.2f}, undecayed&magnitude {int((b & mag).sum()) / k:.2f}")
        print(f"wd {wd:g} density {d:g}: " + "; ".join(line))
