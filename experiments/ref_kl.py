"""The reference KL's estimator in each form: how close each (mode, estimator) pair keeps a fine-tuned
policy to its reference, as the coefficient grows.

    python experiments/ref_kl.py [--seeds 3] [--out experiments/results/ref_kl.md]

A CartPole-v1 policy is trained (the test suite's small config, 512 env steps), then fine-tuned from
it for 12 updates at a high learning rate (2e-2) with no entropy bonus, so it would drift, once per
pair: ref_kl_mode reward or loss, ref_kl_estimator k1 or k3, a grid of ref_kl_coef in one compiled
sweep per pair. The figure is each run's mean logged `ref_kl` over its last 4 updates; the logged
value is the pair's own estimator, whose mean over the rollout estimates the KL either way.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from experiments.benchmark import report_head  # noqa: E402
from purejaxppo import train  # noqa: E402
from purejaxppo.config import PPOConfig  # noqa: E402
from purejaxppo.sweep import sweep  # noqa: E402

SOURCE = PPOConfig(env="CartPole-v1", num_envs=4, num_steps=16, total_timesteps=512, num_minibatches=2,
                   update_epochs=2, hidden_sizes=(16,), normalize_obs=True, env_kwargs={"max_steps_in_episode": 20})
COEFS = [0.01, 1.0, 100.0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "experiments" / "results" / "ref_kl.md"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        train(SOURCE, Path(tmp) / "source")
        for mode in ("reward", "loss"):
            for estimator in ("k1", "k3"):
                config = SOURCE.replace(init_from=str(Path(tmp) / "source"), lr=2e-2, ent_coef=0.0,
                                        ref_kl_coef=COEFS[0], ref_kl_mode=mode, ref_kl_estimator=estimator,
                                        total_timesteps=SOURCE.batch_size * 12)
                result = sweep(config, seeds=args.seeds, grid={"ref_kl_coef": COEFS})
                final = np.asarray(result.metrics["ref_kl"])[:, -4:].mean(axis=1).reshape(len(COEFS), args.seeds)
                auto = {"reward": "k1", "loss": "k3"}[mode] == estimator
                rows.append((mode, estimator + (" (auto)" if auto else ""), final))
                print(mode, estimator, final.round(4).tolist(), flush=True)
    command = "python experiments/ref_kl.py" + (f" --seeds {args.seeds}" if args.seeds != 3 else "")
    lines = report_head("The reference KL: each mode and estimator against the coefficient", command, __doc__) + [
        "| mode | estimator | " + " | ".join(f"ref_kl_coef {c:g}: ref_kl per seed" for c in COEFS) + " |",
        "|---|---|" + "---|" * len(COEFS),
    ]
    for mode, estimator, final in rows:
        cells = [", ".join(f"{v:.4f}" for v in per_coef) for per_coef in final]
        lines.append(f"| {mode} | {estimator} | " + " | ".join(cells) + " |")
    lines += ["", "With the pairs `auto` picks, a larger coefficient keeps the policy closer. k3 in the reward "
              "and k1 in the loss give gradients that are not the KL's (k3's value depends on the policy "
              "beyond its score; k1 on the rollout's own actions has zero expected gradient there), and "
              "the KL may grow with the coefficient instead.", ""]
    Path(args.out).write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
