"""Videos: what each env family draws, what a frame costs, and what `video_every` costs training.

Writes `experiments/results/videos.md` and one still frame per family (`experiments/results/videos/<family>.png`),
each from a short training run of that family's env (the frames show its drawing, not a trained agent's
skill), with the milliseconds per frame of the drawing alone; then the default CartPole-v1 agent trained
with and without `video_every`, its env steps per second from the run's own clock, seeds 0 and 1.

    python experiments/videos.py            # about 10 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import imageio.v3 as iio  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from purejaxppo import config as config_lib  # noqa: E402
from purejaxppo import train  # noqa: E402
from purejaxppo.host.trained import read_trained, trained_env  # noqa: E402
from purejaxppo.program.evaluation import record_episodes  # noqa: E402

SMALL = ["num_envs=8", "num_steps=16", "num_minibatches=2", "update_epochs=1", "hidden_sizes=[32]",
         "total_timesteps=256"]
FAMILIES = {  # file name: (family, config, overrides)
    "gymnax-classic": ("gymnax classic control (CartPole-v1)", "cartpole.yaml", SMALL),
    "gymnax-minatar": ("gymnax MinAtar (Breakout-MinAtar)", "cartpole.yaml", [*SMALL, "env=Breakout-MinAtar"]),
    "brax": ("Brax (inverted_pendulum)", "brax/inverted_pendulum.yaml", SMALL),
    "playground": ("MuJoCo Playground (CartpoleBalance)", "cartpole.yaml",
                   [*SMALL, "env=playground/CartpoleBalance", "env_kwargs={impl: jax, episode_length: 100}"]),
    "craftax": ("Craftax (Classic, symbolic)", "cartpole.yaml", [*SMALL, "env=craftax/Craftax-Classic-Symbolic-v1"]),
    "jumanji": ("Jumanji (Maze-v0)", "cartpole.yaml", [*SMALL, "env=jumanji/Maze-v0"]),
    "xminigrid": ("XLand-MiniGrid (MiniGrid-FourRooms)", "cartpole.yaml", [*SMALL, "env=xminigrid/MiniGrid-FourRooms"]),
}
FRAMES = 20  # frames drawn per family for the cost


def still_frames(folder: Path, out: Path) -> list[str]:
    rows = ["| family | frame (height x width) | ms per frame | still |", "|---|---|---|---|"]
    out.mkdir(parents=True, exist_ok=True)
    for slug, (family, name, overrides) in FAMILIES.items():
        config = config_lib.load(ROOT / "configs" / name, overrides)
        run_dir = folder / slug
        train(config, run_dir)
        trained = read_trained(run_dir)
        env = trained_env(trained.record)
        states, _, lengths = jax.device_get(jax.jit(lambda k: record_episodes(
            trained.policy, env, trained.params, trained.obs_stats, k, 1, FRAMES))(jax.random.key(0)))
        picked = [jax.tree.map(lambda x: x[t, 0], states) for t in range(FRAMES)]
        env.render(picked[0])  # the renderer's start-up, not counted
        start = time.perf_counter()
        frames = [np.asarray(env.render(s)) for s in picked]
        ms = (time.perf_counter() - start) * 1000 / FRAMES
        png = out / f"{slug}.png"
        Image.fromarray(frames[min(5, FRAMES - 1)]).save(png, optimize=True)
        rows.append(f"| {family} | {frames[0].shape[0]} x {frames[0].shape[1]} | {ms:.1f} | "
                    f"![{family}](videos/{png.name}) |")
        print(rows[-1], flush=True)
    return rows


def training_cost(folder: Path, every: int) -> list[str]:
    rows = ["| video_every | seed | videos (frames) | training s | env steps/s while training | waiting for the "
            "last videos s |", "|---|---|---|---|---|---|"]
    for seed in (0, 1):
        for video_every in (0, every):
            config = config_lib.load(ROOT / "configs" / "cartpole.yaml", [f"seed={seed}", f"video_every={video_every}"])
            run_dir = folder / f"cost-{seed}-{video_every}"
            last: list = []
            result = train(config, run_dir, on_progress=last.append)
            training = last[-1].seconds  # to the last chunk's end; the run's time also holds the wait at its close
            frames = sum(Image.open(p).n_frames if p.suffix == ".gif" else len(iio.imread(p))
                         for p in (run_dir / "videos").glob("*")) if video_every else 0
            videos = len(list((run_dir / "videos").glob("*"))) if video_every else 0
            rows.append(f"| {video_every or 'off'} | {seed} | {videos} ({frames:,}) | {training:.2f} | "
                        f"{config.total_timesteps // config.batch_size * config.batch_size / training:,.0f} | "
                        f"{result.run_time - training:.2f} |")
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--every", type=int, default=50, help="video_every for the training cost")
    parser.add_argument("--out", default=str(ROOT / "experiments" / "results" / "videos.md"))
    args = parser.parse_args()
    out = Path(args.out)
    with tempfile.TemporaryDirectory() as tmp:
        stills = still_frames(Path(tmp), out.parent / "videos")
        cost = training_cost(Path(tmp), args.every)
    out.write_text("\n".join([
        "# Videos: what each family draws, and what it costs", "",
        f"Machine: {platform.processor() or platform.machine()}, {jax.device_count()} {jax.devices()[0].platform} "
        f"device(s), jax {jax.__version__}. Command: `python experiments/videos.py --every {args.every}`.", "",
        "## One still frame per family", "",
        f"Each from a run of {SMALL[-1].split('=')[1]} env steps (so not a skilled agent), the 6th frame of a "
        f"deterministic episode; the cost is the drawing alone, over {FRAMES} frames, after the renderer's start-up "
        "(MuJoCo's through EGL, headless).", "", *stills, "",
        "## What `video_every` costs training", "",
        f"`configs/cartpole.yaml` (500,000 env steps, 488 updates in chunks of 25), with `video_every: {args.every}` "
        "(MP4) against none, each run's own run time (compile and start-up excluded; the recording program's compile "
        "at the first video is included).", "", *cost, ""]))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
